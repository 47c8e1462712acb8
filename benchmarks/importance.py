"""importance_update benchmark: the fused kernel vs winnow.reference vs peft's eager update_ipt.

Default case (the foundation issue's): 64 tensors totalling 32M float32 elements, AdaLoRA mode.
The floor is 24 B/element (read p, g, Ibar, Ubar; write Ibar, Ubar).
"""
import torch

from benchmarks import harness
from winnow import ops, reference

BYTES_PER_ELEMENT = 24


def _peft_update(params, grads):
    """peft's RankAllocator.update_ipt over the same tensors, held as `...lora_A.default` params."""
    from peft import AdaLoraConfig
    from peft.tuners.adalora.layer import RankAllocator

    class Holder(torch.nn.Module):
        def __init__(self, p):
            super().__init__()
            self.lora_A = torch.nn.ParameterDict({"default": torch.nn.Parameter(p, requires_grad=True)})

    model = torch.nn.ModuleList([Holder(p) for p in params])
    for m, g in zip(model, grads):
        m.lora_A["default"].grad = g
    cfg = AdaLoraConfig(total_step=1000, target_r=1, init_r=2)
    allocator = RankAllocator(model, cfg, "default")
    return lambda: allocator.update_ipt(model)


def run(device: torch.device, num_tensors: int = 64, total_elements: int = 32 << 20, with_peft: bool = True,
        rounds: int = 25) -> dict:
    per = total_elements // num_tensors
    params = [torch.randn(per, device=device) for _ in range(num_tensors)]
    grads = [torch.randn(per, device=device) for _ in range(num_tensors)]
    stats = lambda: [torch.zeros(per, device=device) for _ in range(num_tensors)]  # noqa: E731
    ipt, unc, ipt_r, unc_r = stats(), stats(), stats(), stats()
    cnt = torch.zeros(num_tensors, dtype=torch.int64, device=device)
    cnt_r = cnt.clone()
    contenders = {
        "winnow fused": lambda: ops.importance_update_adalora(params, grads, ipt, unc, 0.85, 0.85, cnt),
        "winnow.reference": lambda: reference.importance_update_adalora(params, grads, ipt_r, unc_r, 0.85, 0.85, cnt_r),
    }
    if with_peft:
        contenders["peft update_ipt"] = _peft_update(params, grads)
    samples = harness.time_interleaved(contenders, device, rounds=rounds)
    times = {k: harness.median(v) for k, v in samples.items()}
    copy_gbs = harness.copy_bandwidth(device)
    n = per * num_tensors
    floor_s = BYTES_PER_ELEMENT * n / (copy_gbs * 1e9)
    rows = []
    for name, t in times.items():
        gbs = BYTES_PER_ELEMENT * n / t / 1e9
        rows.append({
            "contender": name,
            "ms": t * 1e3,
            "speedup vs peft": (harness.paired_speedup(samples["peft update_ipt"], samples[name])
                                if with_peft else float("nan")),
            "GB/s @24B/elem": gbs,
            "% of copy BW": 100 * gbs / copy_gbs,
        })
    table = harness.format_table(rows, ["contender", "ms", "speedup vs peft", "GB/s @24B/elem", "% of copy BW"])
    header = (
        f"importance_update (AdaLoRA mode), {num_tensors} tensors x {per} = {n} float32 elements on "
        f"{harness.device_name(device)}\nmeasured copy bandwidth {copy_gbs:.1f} GB/s (read+write); "
        f"floor at 24 B/element = {floor_s * 1e3:.2f} ms"
    )
    return {"header": header, "table": table, "rows": rows, "copy_GBps": copy_gbs, "elements": n,
            "num_tensors": num_tensors, "floor_ms": floor_s * 1e3}
