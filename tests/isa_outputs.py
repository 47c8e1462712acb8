"""Every csrc/cpu/isa/ kernel on fixed inputs (odd sizes, every dtype), saved to argv[1]: run by
tests/test_cpu_isa.py once per instruction set (WINNOW_CPU_CAPABILITY) to compare the copies."""
import sys

import torch

import winnow._C as C
from winnow import ops

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIZES = [1, 7, 4097, 70001]  # a 70001-element tensor spans three 2^15-element chunks


def stat(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def outputs() -> dict:
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)

    out = {"capability": C.cpu_capability()}
    for dtype in DTYPES:
        d = str(dtype).split(".")[1]
        # masked_adamw_step: random blocks in random slot order, mixed step counts, both flags
        for amsgrad, maximize in [(False, False), (True, True)]:
            params, grads, m, v, vmax, blocks, steps, bss = [], [], [], [], [], [], [], []
            for n, bs in zip(SIZES, [64, 3, 256, 64]):
                nb = (n + bs - 1) // bs
                chosen = (torch.rand(nb, generator=gen) < 0.6).nonzero().view(-1)
                chosen = chosen[torch.randperm(chosen.numel(), generator=gen)]
                a = chosen.numel()
                params.append(randn(n, dtype=dtype))
                grads.append(randn(n, dtype=dtype))
                m.append(randn(a * bs, dtype=stat(dtype), scale=0.1))
                v.append(randn(a * bs, dtype=stat(dtype)).abs() * 0.01)
                vmax.append(v[-1] * 1.5)
                blocks.append(chosen)
                steps.append(torch.randint(0, 5, (a,), generator=gen, dtype=torch.int32))
                bss.append(bs)
            ops.masked_adamw_step(params, grads, m, v, vmax if amsgrad else [], blocks, steps, bss, lr=1e-2,
                                  beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=amsgrad,
                                  maximize=maximize)
            out[f"adamw-{d}-{amsgrad}"] = [params, m, v, vmax if amsgrad else []]
        # importance_update: AdaLoRA, and ID3 with each exponent path (with and without a mask)
        ps, gs = [randn(n, dtype=dtype) for n in SIZES], [randn(n, dtype=dtype) for n in SIZES]
        gs[-1][5] = float("inf")
        ipt, unc = [torch.rand(n, generator=gen).to(stat(dtype)) for n in SIZES], [torch.zeros(n, dtype=stat(dtype)) for n in SIZES]
        bad = torch.zeros(len(SIZES), dtype=torch.int64)
        ops.importance_update_adalora(ps, gs, ipt, unc, 0.85, 0.85, bad)
        out[f"adalora-{d}"] = [ipt, unc, bad]
        for exponent in (0.0, 1.0, 0.5):
            scores = [torch.rand(n, generator=gen).to(stat(dtype)) for n in SIZES]
            masks = [torch.rand(n, generator=gen) < 0.3 for n in SIZES]
            bad = torch.zeros(len(SIZES), dtype=torch.int64)
            ops.importance_update_id3(ps, gs, scores, masks if exponent != 1.0 else None, eps=1e-6,
                                      exponent=exponent, beta=0.5, nonfinite=bad)
            out[f"id3-{d}-{exponent}"] = [scores, bad]
        # id3_topk: the fused selection (small k) and the stored-score one (large k)
        for exponent in (0.0, 1.0, 0.5):
            out[f"id3_topk-{d}-{exponent}"] = [
                ops.id3_topk(ps, gs, masks, k, eps=1e-6, exponent=exponent) for k in (3, 30000)]
        # oba_score_accumulate
        acc = [torch.zeros(n, dtype=torch.float64) for n in SIZES]
        ops.oba_score_accumulate(ps, gs, acc)
        out[f"oba-{d}"] = acc
        # act_tangent and its backward, every activation; softmax_tangent and its backward
        z = randn(70001, dtype=dtype, scale=3.0)
        t = [randn(70001, dtype=dtype) for _ in range(3)]
        for kind in ops.ACT_KINDS:
            out[f"act-{d}-{kind}"] = [*ops.act_tangent(z, t[0], kind), *ops.act_tangent_backward(z, *t, kind)]
        p = torch.softmax(randn(37, 301), -1).to(dtype)
        ds, g = randn(37, 301, dtype=dtype), randn(37, 301, dtype=dtype)
        out[f"softmax-{d}"] = [ops.softmax_tangent(p, ds), *ops.softmax_tangent_backward(p, ds, g)]
    for dtype in (torch.float32, torch.float64):  # importance_score and masked_topk: float32/64 only
        d = str(dtype).split(".")[1]
        shapes = [(1,), (7, 9), (301, 257), (1, 4097)]
        a = [torch.rand(s, generator=gen).to(dtype) for s in shapes]
        u = [torch.rand(s, generator=gen).to(dtype) for s in shapes]
        out[f"score-{d}"] = ops.importance_score(a, u, [None, 0, 1, 0]) + ops.importance_score(a, u, [None, 1, 0, 1])
        scores = [randn(n, dtype=dtype) for n in SIZES]
        masks = [torch.rand(n, generator=gen) < 0.5 for n in SIZES]
        out[f"topk-{d}"] = ops.masked_topk(scores, masks, 17) + ops.masked_topk(scores, None, 3000)
    return out


if __name__ == "__main__":
    torch.save(outputs(), sys.argv[1])
