"""AdaLoRA on winnow's kernels: the budget schedule and a fused, peft-compatible RankAllocator."""
from winnow.adalora.allocator import RankAllocator, accelerate
from winnow.adalora.schedule import budget_schedule, check_schedule

__all__ = ["RankAllocator", "accelerate", "budget_schedule", "check_schedule"]
