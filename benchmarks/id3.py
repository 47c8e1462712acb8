"""ID3 benchmark: winnow.ID3 step time vs the authors' toolkit (PyPI selective-optimizers) and
torch's fused dense AdamW, on a MiniLM-sized parameter set (all-MiniLM-L6-v2's shapes, 22.7M).

Default: budget 320k over 1000 steps (u_t = 320 per step); steps timed after a warm-up, with the
masks partly grown, gradients fixed. State bytes reported for each.
"""
import torch

from benchmarks import harness


FLOOR = "torch sums: read p and g once"
LATE = "winnow ID3, 90% of budget unmasked"


def minilm_shapes() -> list[tuple[int, ...]]:
    hidden, inter, layers, vocab = 384, 1536, 6, 30522
    shapes = [(vocab, hidden), (512, hidden), (2, hidden), (hidden,), (hidden,)]
    for _ in range(layers):
        for _ in range(4):
            shapes += [(hidden, hidden), (hidden,)]
        shapes += [(hidden,), (hidden,), (inter, hidden), (inter,), (hidden, inter), (hidden,), (hidden,), (hidden,)]
    return shapes + [(hidden, hidden), (hidden,)]


def _params(device, shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=gen).mul_(0.05).to(device).requires_grad_() for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return ps


def run(device: torch.device, budget: int = 320_000, total_steps: int = 1000, rounds: int = 10,
        with_toolkit: bool = True) -> dict:
    import winnow

    shapes = minilm_shapes()
    n = sum(torch.Size(s).numel() for s in shapes)
    contenders = {}
    dense = torch.optim.AdamW(_params(device, shapes, 0), lr=1e-4, fused=True)
    contenders["torch AdamW fused (dense)"] = dense
    ours = winnow.ID3(_params(device, shapes, 1), budget=budget, total_steps=total_steps, lr=1e-4)
    contenders["winnow ID3"] = ours
    # The same, timed near the end of its budget: the AdamW step on the unmasked set grows with it
    # (scattered single elements), the scan does not.
    late = winnow.ID3(_params(device, shapes, 5), budget=budget, total_steps=total_steps, lr=1e-4)
    for _ in range(max(0, total_steps * 9 // 10 - rounds - 3)):
        late.step()
    contenders[LATE] = late
    if with_toolkit:
        from selective_optimizers.wrap import get_selective_optimizer

        toolkit = get_selective_optimizer(torch.optim.AdamW, "id3")(
            _params(device, shapes, 2), lr=1e-4, budget=budget, max_steps=total_steps, verify=False)
        contenders["selective-optimizers id3"] = toolkit
    # What an ID3 step reads at least: p and g once, here as torch's two sums over tensors of n
    # elements, timed in the same rounds so the ratios below can be read against it. Not a hard
    # floor: a read that prefetches ahead by hand goes faster (27 vs 19-20 GB/s on 2 Xeon threads).
    flat_p, flat_g = (torch.randn(n, generator=torch.Generator().manual_seed(s)).to(device) for s in (3, 4))
    steps = {k: o.step for k, o in contenders.items()}
    steps[FLOOR] = lambda: (flat_p.sum(), flat_g.sum())
    samples = harness.time_interleaved(steps, device, warmup=3, rounds=rounds)
    base, dense_samples = samples["winnow ID3"], samples["torch AdamW fused (dense)"]
    rows = []
    for name, opt in [*contenders.items(), (FLOOR, None)]:
        if opt is None:
            state = 0
        elif isinstance(opt, winnow.ID3):
            state = opt.state_bytes()
        else:
            state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
            if name.startswith("selective"):
                state += sum(m.numel() * m.element_size() for g in opt.param_groups for m in g["chosen_masks"]
                             if m is not None)
        rows.append({
            "optimizer": name,
            "ms/step": harness.median(samples[name]) * 1e3,
            "winnow ID3 speedup": harness.paired_speedup(samples[name], base),
            "time vs dense fused": 1 / harness.paired_speedup(dense_samples, samples[name]),
            "state MB": state / 2**20,
        })
    header = (f"ID3: {n} params in {len(shapes)} tensors (MiniLM shapes), budget {budget} over {total_steps} steps "
              f"({budget // total_steps}/step), unmasked so far {ours.unmasked_count()} (late: "
              f"{late.unmasked_count()}), on "
              f"{harness.device_name(device)}; winnow workspace (masks + scores) "
              f"{ours.workspace_bytes() / 2**20:.0f} MB")
    return {"header": header, "table": harness.format_table(rows, ["optimizer", "ms/step", "winnow ID3 speedup",
                                                                    "time vs dense fused", "state MB"]), "rows": rows}
