"""The one dtype rule of winnow's running statistics (importance EMAs, ID3 scores, optimizer
state): float32 for half, bfloat16 and float32 tensors, float64 for float64 ones. The kernels
check the same rule (csrc/include/winnow/checks.h, stat_dtype)."""
import torch


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
