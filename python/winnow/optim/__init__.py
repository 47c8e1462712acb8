"""Optimizers on winnow's fused kernels."""
from winnow.optim.masked_adamw import MaskedAdamW

__all__ = ["MaskedAdamW"]
