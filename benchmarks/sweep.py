"""Time vs size for every bandwidth-bound kernel, next to its ATen anchor, and the GB/s each
reaches against the machine's copy bandwidth (the floor: a kernel that reads and writes B bytes
an element can not beat B / copy bandwidth). One tensor per call, float32 (scores float64),
sizes 4^6 .. 4^12 elements; at small sizes launch and threading overheads dominate.

kernel                     winnow                      anchor (ATen, eager)                bytes / element
importance_update_adalora  ops.importance_update_*     reference.importance_update_*       24 (p g ipt unc; ipt unc)
masked_adamw_step (dense)  winnow.optim.MaskedAdamW    torch.optim.AdamW(fused=True)       28 (p g m v; p m v)
act_tangent (gelu)         ops.act_tangent             torch.func.jvp(F.gelu)              16 (z dz; y dy)
softmax_tangent            ops.softmax_tangent         p * (ds - (p * ds).sum(-1))         12 (p ds; dp), rows of 256
oba_score_accumulate       ops.oba_score_accumulate    s += t.double() * h.double()        24 (t h s; s)
"""
import torch
import torch.nn.functional as F

from benchmarks import harness


def _cases(n: int, device: torch.device):
    """{kernel: (bytes per element, winnow fn, anchor fn)} for n elements."""
    from winnow import ops, reference
    from winnow.optim import MaskedAdamW

    def t(dtype=torch.float32):
        return torch.randn(n, device=device, dtype=dtype)

    p, g, ipt, unc, nonfinite = t(), t(), t().abs(), t().abs(), torch.zeros(1, dtype=torch.int64, device=device)
    ipt_r, unc_r = ipt.clone(), unc.clone()
    cases = {
        "importance_update_adalora": (
            24, lambda: ops.importance_update_adalora([p], [g], [ipt], [unc], 0.85, 0.85, nonfinite),
            lambda: reference.importance_update_adalora([p], [g], [ipt_r], [unc_r], 0.85, 0.85, nonfinite.clone())),
    }
    w1, w2 = torch.nn.Parameter(t()), torch.nn.Parameter(t())
    w1.grad, w2.grad = t(), t()
    ours, fused = MaskedAdamW([w1], lr=1e-4), torch.optim.AdamW([w2], lr=1e-4, fused=True)
    cases["masked_adamw_step"] = (28, ours.step, fused.step)
    z, dz = t(), t()
    cases["act_tangent"] = (16, lambda: ops.act_tangent(z, dz, "gelu"),
                            lambda: torch.func.jvp(F.gelu, (z,), (dz,)))
    rows = max(1, n // 256)
    sp = torch.softmax(torch.randn(rows, n // rows, device=device), -1)
    sds = torch.randn_like(sp)
    cases["softmax_tangent"] = (12, lambda: ops.softmax_tangent(sp, sds),
                                lambda: sp * (sds - (sp * sds).sum(-1, keepdim=True)))
    th, h, s1, s2 = t(), t(), t(torch.float64), t(torch.float64)
    cases["oba_score_accumulate"] = (24, lambda: ops.oba_score_accumulate([th], [h], [s1]),
                                     lambda: s2.add_(th.double() * h.double()))
    return cases


def run(device: torch.device, rounds: int = 7, max_log4: int = 12) -> dict:
    floor = harness.copy_bandwidth(device, rounds=5)
    rows = []
    for log4 in range(6, max_log4 + 1):
        n = 4 ** log4
        for kernel, (nbytes, ours, anchor) in _cases(n, device).items():
            samples = harness.time_interleaved({"winnow": ours, "anchor": anchor}, device, warmup=2, rounds=rounds)
            t = harness.median(samples["winnow"])
            rows.append({
                "kernel": kernel, "elements": n, "winnow ms": t * 1e3, "anchor ms": harness.median(samples["anchor"]) * 1e3,
                "speedup": harness.paired_speedup(samples["anchor"], samples["winnow"]),
                "GB/s": nbytes * n / t / 1e9, "% of copy BW": 100 * nbytes * n / t / 1e9 / floor,
            })
    header = (f"Kernel sweep on {harness.device_name(device)}: winnow vs its ATen anchor, median of {rounds} "
              f"paired rounds; copy bandwidth (floor) {floor:.1f} GB/s")
    cols = ["kernel", "elements", "winnow ms", "anchor ms", "speedup", "GB/s", "% of copy BW"]
    return {"header": header, "table": harness.format_table(rows, cols), "rows": rows, "copy_GBps": floor}
