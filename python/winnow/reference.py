"""Pure-PyTorch references of every winnow kernel: the ground truth for tests and benchmarks.

Each function has the signature and in-place semantics of the op of the same name in
winnow.ops, written with plain tensor operations and no attempt at speed.
"""
import torch
from torch import Tensor


def _stat_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def importance_update_adalora(params, grads, exp_avg_ipt, exp_avg_unc, beta1, beta2, nonfinite) -> None:
    with torch.no_grad():
        for i, (p, g, ibar, ubar) in enumerate(zip(params, grads, exp_avg_ipt, exp_avg_unc)):
            acc = _stat_dtype(p)
            ipt = (p.to(acc) * g.to(acc)).abs()
            ok = torch.isfinite(ipt)
            new_ibar = beta1 * ibar + (1 - beta1) * ipt
            new_ubar = beta2 * ubar + (1 - beta2) * (ipt - new_ibar).abs()
            ibar.copy_(torch.where(ok, new_ibar, ibar))
            ubar.copy_(torch.where(ok, new_ubar, ubar))
            nonfinite[i] += (~ok).sum()


def importance_update_id3(
    params, grads, scores, unmasked=None, *, eps=1e-8, exponent=1.0, beta=0.0, nonfinite
) -> None:
    with torch.no_grad():
        for i, (p, g, s) in enumerate(zip(params, grads, scores)):
            acc = _stat_dtype(p)
            h = g.to(acc).abs() / (p.to(acc).abs() + eps) ** exponent
            ok = torch.isfinite(h)
            if unmasked is not None:
                ok_or_skip = ok | unmasked[i]
                ok = ok & ~unmasked[i]
            else:
                ok_or_skip = ok
            s.copy_(torch.where(ok, beta * s + (1 - beta) * h, s))
            nonfinite[i] += (~ok_or_skip).sum()


def importance_score(exp_avg_ipt, exp_avg_unc, mean_dims=None) -> list[Tensor]:
    dims = [None] * len(exp_avg_ipt) if mean_dims is None else mean_dims
    out = []
    for a, u, d in zip(exp_avg_ipt, exp_avg_unc, dims):
        s = a * u
        out.append(s if d is None else s.to(torch.float64).mean(dim=d).to(a.dtype))
    return out
