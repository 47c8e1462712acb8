"""masked_adamw_step benchmark: MaskedAdamW at several densities vs torch's AdamW (fused, foreach).

Default case (the MaskedAdamW issue's): 16M float32 parameters in 16 tensors, block sizes 64 and
256, active blocks drawn at random or as one contiguous run per tensor (the first blocks).
The floor is 28 B per active parameter (read p, g, m, v; write p, m, v).
"""
import torch

from benchmarks import harness
from winnow.optim import MaskedAdamW

BYTES_PER_ACTIVE = 28


def _params(device, num_tensors, per):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(per, generator=gen).to(device).requires_grad_() for _ in range(num_tensors)]
    for p in params:
        p.grad = torch.randn(per, generator=gen).to(device)
    return params


def _mask(nb: int, density: float, pattern: str, gen: torch.Generator) -> torch.Tensor:
    if pattern == "random":
        return torch.rand(nb, generator=gen) < density
    return torch.arange(nb) < round(nb * density)  # one run of blocks at the start of the tensor


def run(device: torch.device, num_tensors: int = 16, total_elements: int = 16 << 20, block_sizes=(64, 256),
        densities=(1.0, 0.5, 0.1, 0.01), patterns=("random", "contiguous"), rounds: int = 15) -> dict:
    per = total_elements // num_tensors
    n = per * num_tensors
    optimizers = {}
    for kind in ("fused", "foreach"):
        ps = _params(device, num_tensors, per)
        optimizers[f"torch AdamW {kind}"] = (torch.optim.AdamW(ps, lr=1e-4, **{kind: True}), 1.0)
    for bs in block_sizes:
        for d in densities:
            for pattern in (patterns if d < 1.0 else patterns[:1]):
                ps = _params(device, num_tensors, per)
                opt = MaskedAdamW(ps, lr=1e-4, block_size=bs)
                if d < 1.0:
                    gen = torch.Generator().manual_seed(1)
                    for p in ps:
                        opt.set_mask(p, _mask(opt.num_blocks(p), d, pattern, gen).to(device))
                label = f"winnow bs {bs} density {d:g}" + (f" {pattern}" if d < 1.0 else "")
                optimizers[label] = (opt, d)
    samples = harness.time_interleaved({k: o.step for k, (o, _) in optimizers.items()}, device, rounds=rounds)
    copy_gbs = harness.copy_bandwidth(device)
    base = samples["torch AdamW fused"]
    dense_state = None
    rows = []
    for name, (opt, d) in optimizers.items():
        t = harness.median(samples[name])
        if isinstance(opt, MaskedAdamW):
            active = sum(s["active_blocks"].numel() * s["block_size"] for s in opt.state.values())
            active = min(active, n)
            state = opt.state_bytes()
        else:
            active = n
            state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                        if torch.is_tensor(v))
            dense_state = dense_state or state
        gbs = BYTES_PER_ACTIVE * active / t / 1e9
        rows.append({
            "optimizer": name,
            "density": active / n,
            "ms": t * 1e3,
            "time vs fused": 1 / harness.paired_speedup(base, samples[name]),
            "state MB": state / 2**20,
            "GB/s @28B/active": gbs,
            "% of copy BW": 100 * gbs / copy_gbs,
        })
    for r in rows:
        r["state vs dense"] = r["state MB"] * 2**20 / dense_state
    cols = ["optimizer", "density", "ms", "time vs fused", "state MB", "state vs dense", "GB/s @28B/active",
            "% of copy BW"]
    header = (
        f"masked_adamw_step: {num_tensors} tensors x {per} = {n} float32 params, block sizes "
        f"{'/'.join(map(str, block_sizes))}, random or contiguous active blocks, on "
        f"{harness.device_name(device)}\nmeasured copy bandwidth {copy_gbs:.1f} GB/s (read+write); "
        f"'time vs fused' = step time / torch AdamW(fused=True) step time, paired per round"
    )
    return {"header": header, "table": harness.format_table(rows, cols), "rows": rows, "copy_GBps": copy_gbs}
