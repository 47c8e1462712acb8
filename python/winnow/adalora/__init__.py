"""AdaLoRA on winnow's kernels: SVD adapters, the budget schedule, a fused peft-compatible
RankAllocator, and peft interoperability (accelerate a peft model; save / load peft's format)."""
from winnow.adalora.allocator import RankAllocator, accelerate
from winnow.adalora.layers import SVDLinear
from winnow.adalora.model import AdaLoRA
from winnow.adalora.schedule import budget_schedule, check_schedule

__all__ = ["AdaLoRA", "RankAllocator", "SVDLinear", "accelerate", "budget_schedule", "check_schedule"]
