"""Pure-PyTorch references of every winnow kernel: the ground truth for tests and benchmarks.

Each function has the signature and in-place semantics of the op of the same name in
winnow.ops, written with plain tensor operations and no attempt at speed.
"""
import math

import torch
from torch import Tensor

from winnow.dtypes import stat_dtype


def importance_update_adalora(params, grads, exp_avg_ipt, exp_avg_unc, beta1, beta2, nonfinite) -> None:
    with torch.no_grad():
        for i, (p, g, ibar, ubar) in enumerate(zip(params, grads, exp_avg_ipt, exp_avg_unc)):
            acc = stat_dtype(p.dtype)
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
            acc = stat_dtype(p.dtype)
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


def masked_adamw_step(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, active_blocks, block_steps, block_sizes, *,
    lr, beta1, beta2, weight_decay, eps, amsgrad=False, maximize=False, grad_scale=None, found_inf=None,
) -> None:
    """Dense-gather AdamW on the active blocks, written like torch.optim.AdamW's single-tensor
    path (same operation order), per block with its own bias correction."""
    if found_inf is not None and found_inf.item() != 0:
        return
    with torch.no_grad():
        for i, p in enumerate(params):
            bs = block_sizes[i]
            acc = stat_dtype(p.dtype)
            blocks = active_blocks[i]
            block_steps[i] += 1
            nblocks = blocks.numel()
            if nblocks == 0:
                continue
            # element index of every compact slot; slots past the end of a partial block are padding
            idx = (blocks[:, None] * bs + torch.arange(bs, device=p.device)[None, :]).reshape(-1)
            valid = idx < p.numel()
            idx = idx[valid]
            flat_p = p.view(-1)
            pv = flat_p[idx].to(acc)
            g = grads[i].reshape(-1)[idx].to(acc)
            if grad_scale is not None:
                g = g / grad_scale.to(acc)
            if maximize:
                g = -g
            m = exp_avgs[i][valid]
            v = exp_avg_sqs[i][valid]
            steps = block_steps[i].to(torch.float64).repeat_interleave(bs)[valid]
            bc1 = 1 - beta1 ** steps
            bc2_sqrt = (1 - beta2 ** steps).sqrt()
            neg_step_size = (-(lr / bc1)).to(acc)
            pv = pv * (1 - lr * weight_decay)
            m = torch.lerp(m, g, 1 - beta1)
            v = v * beta2 + (1 - beta2) * g * g
            second = v
            if amsgrad:
                vmax = torch.maximum(max_exp_avg_sqs[i][valid], v)
                max_exp_avg_sqs[i][valid] = vmax
                second = vmax
            denom = second.sqrt() / bc2_sqrt.to(acc) + eps
            pv = pv + neg_step_size * m / denom
            exp_avgs[i][valid] = m
            exp_avg_sqs[i][valid] = v
            flat_p[idx] = pv.to(p.dtype)


def _rank(v: float) -> tuple[int, float]:
    """The ranking rule of every selection (csrc/include/winnow/order_key.h): numbers by value,
    -0 == +0 (Python compares them equal), NaN below every number, -inf included."""
    return (0, 0.0) if v != v else (1, v)


def rank_prune(lora_E, ipt_E, unc_E, ipt_A, unc_A, ipt_B, unc_B, num_masked):
    """peft's mask_to_budget on statistics given as lists (k = 0 masks nothing instead of failing):
    the num_masked-th smallest triplet score is the threshold, every score at or below it is
    masked. Scores rank by _rank (NaN, from a zero-width module's empty mean, lowest: masked
    first), where peft's kthvalue would rank NaN highest."""
    with torch.no_grad():
        scores = []
        for ie, ue, ia, ua, ib, ub in zip(ipt_E, unc_E, ipt_A, unc_A, ipt_B, unc_B):
            mean_a = (ia * ua).mean(dim=1, keepdim=True)
            mean_b = (ib * ub).mean(dim=0).view(-1, 1)
            scores.append((ie * ue).view(-1) + torch.cat([mean_a, mean_b], dim=1).sum(dim=1))
        flat = torch.cat(scores)
        values = flat.tolist()
        keep = torch.ones_like(flat, dtype=torch.bool)
        if num_masked > 0:
            threshold = sorted(map(_rank, values))[num_masked - 1]
            keep = torch.tensor([_rank(v) > threshold for v in values], dtype=torch.bool, device=flat.device)
        offset = 0
        for e in lora_E:
            r = e.shape[0]
            e.masked_fill_(~keep[offset:offset + r].view(-1, 1), 0.0)
            offset += r
        return flat, keep


def masked_topk(scores, unmasked, k):
    """Brute force: sort every masked (score, tensor, index) triple, best first by _rank, ties by
    (tensor, index); the first k (all of them when fewer are masked)."""
    entries = []
    for t, s in enumerate(scores):
        flat = s.reshape(-1).tolist()
        skip = unmasked[t].reshape(-1).tolist() if unmasked else [False] * len(flat)
        for i, (v, u) in enumerate(zip(flat, skip)):
            if not u:
                rank, value = _rank(v)
                entries.append((-rank, -value, t, i))
    entries.sort()
    out = [[] for _ in scores]
    for *_, t, i in entries[:k]:
        out[t].append(i)
    return [torch.tensor(sorted(o), dtype=torch.int64) for o in out]


def id3_topk(params, grads, unmasked, k, *, eps=1e-8, exponent=1.0):
    """H = |g| / (|p| + eps) ** exponent in the statistics dtype, 0 where it is not finite, then
    masked_topk's brute force."""
    scores = []
    for p, g in zip(params, grads):
        acc = stat_dtype(p.dtype)
        if exponent == 0:
            h = g.to(acc).abs()
        elif exponent == 1:
            h = g.to(acc).abs() / (p.to(acc).abs() + eps)
        else:
            h = g.to(acc).abs() / (p.to(acc).abs() + eps) ** exponent
        scores.append(torch.where(torch.isfinite(h), h, 0.0))
    return masked_topk(scores, unmasked, k)


def _act(kind: str, z: Tensor) -> Tensor:
    fns = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu,
           "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    return fns[kind](z)


def act_tangent(z: Tensor, dz: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """(f(z), f'(z) dz) by torch's forward-mode AD, in the op-math dtype."""
    zz, dd = z.to(torch.promote_types(z.dtype, torch.float32)), dz.to(torch.promote_types(dz.dtype, torch.float32))
    y, dy = torch.func.jvp(lambda t: _act(kind, t), (zz,), (dd,))
    return y.to(z.dtype), dy.to(z.dtype)


def act_tangent_backward(z: Tensor, dz: Tensor, gy: Tensor, gdy: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """The vector-Jacobian product of act_tangent, by autograd through the reference."""
    up = torch.promote_types(z.dtype, torch.float32)
    zz = z.to(up).detach().requires_grad_(True)
    dd = dz.to(up).detach().requires_grad_(True)
    with torch.enable_grad():
        d1 = torch.autograd.grad(_act(kind, zz).sum(), zz, create_graph=True)[0]
        y, dy = _act(kind, zz), d1 * dd
        gz, gdz = torch.autograd.grad((y, dy), (zz, dd), (gy.to(up), gdy.to(up)))
    return gz.to(z.dtype), gdz.to(z.dtype)


def oba_score_accumulate(thetas, h_thetas, scores) -> None:
    for t, h, s in zip(thetas, h_thetas, scores):
        s += t.double() * h.double()


def oba_channel_sums(scores: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """Row sums, and per-group column sums laid out group after group."""
    a, b = scores.shape[:2]
    s = scores.reshape(a, b, math.prod(scores.shape[2:])).sum(2)
    return s.sum(1), s.reshape(groups, a // groups, b).sum(1).flatten()


def softmax_tangent(p: Tensor, ds: Tensor) -> Tensor:
    """The JVP of softmax at its input s (p = softmax(s)) along ds, by torch's forward-mode AD:
    p's logits are log p up to a per-row constant, which softmax ignores."""
    up = torch.promote_types(p.dtype, torch.float32)
    _, dp = torch.func.jvp(lambda s: torch.softmax(s, -1), (p.to(up).log(),), (ds.to(up),))
    return dp.to(p.dtype)


def softmax_tangent_backward(p: Tensor, ds: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """The vector-Jacobian product of p * (ds - <p, ds>) in (p, ds), by autograd."""
    up = torch.promote_types(p.dtype, torch.float32)
    pp = p.to(up).detach().requires_grad_(True)
    dd = ds.to(up).detach().requires_grad_(True)
    with torch.enable_grad():
        out = pp * (dd - (pp * dd).sum(-1, keepdim=True))
        gp, gds = torch.autograd.grad(out, (pp, dd), g.to(up))
    return gp.to(p.dtype), gds.to(p.dtype)
