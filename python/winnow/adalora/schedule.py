"""AdaLoRA's cubic budget schedule (the paper's and peft's RankAllocator.budget_schedule)."""


def check_schedule(init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step) -> None:
    """ValueError for a schedule that cannot run, before any training step."""
    if total_step is None:
        raise ValueError("total_step must be set (the number of optimizer steps of the training run)")
    if not isinstance(total_step, int) or total_step <= 0:
        raise ValueError(f"total_step must be a positive int, got {total_step!r}")
    if tinit < 0 or tfinal < 0:
        raise ValueError(f"tinit and tfinal must be >= 0, got tinit={tinit}, tfinal={tfinal}")
    if tinit >= total_step - tfinal:
        raise ValueError(
            f"tinit ({tinit}) must be < total_step - tfinal ({total_step} - {tfinal}): no step would be left for "
            "the budget to shrink"
        )
    if target_bgt > init_bgt:
        raise ValueError(f"the target budget ({target_bgt}) exceeds the initial budget ({init_bgt}): target_r > init_r")


def budget_schedule(step: int, init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step: int,
                    deltaT: int) -> tuple[int, bool]:
    """(budget, mask now?) at optimizer step `step`: init_bgt during the first tinit steps; then
    int((init_bgt - target_bgt) * (1 - (step - tinit) / (total_step - tfinal - tinit))**3 + target_bgt),
    masking every deltaT steps; target_bgt (and mask every step) after total_step - tfinal."""
    if step <= tinit:
        return init_bgt, False
    if step > total_step - tfinal:
        return target_bgt, True
    mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)
    return int((init_bgt - target_bgt) * (mul_coeff**3) + target_bgt), step % deltaT == 0
