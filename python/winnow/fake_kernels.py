"""Fake (meta) kernels of every winnow op: the output shapes for FakeTensor / torch.compile
tracing, and the kernels' own rules (list lengths, shapes, dtypes, devices), stated with
torch._check_value / torch._check_type so that a traced call fails the way the real one does,
with a ValueError / TypeError naming the argument (the C++ checks in csrc/include/winnow/).

They also serve the Meta key, which wins dispatch when one meta tensor hides among real ones:
so they check for one device per call, or such a call would silently do nothing.
"""
import torch
from torch import Tensor

from winnow.dtypes import stat_dtype

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _one_device(op: str, **lists) -> None:
    device = None
    for name, tensors in lists.items():
        for i, t in enumerate([tensors] if isinstance(tensors, Tensor) else tensors):
            if device is None:
                device = t.device
            elif t.device != device:
                raise ValueError(f"{op}: {name}[{i}] is on {t.device} but the other tensors are on {device}")


def _lengths(op: str, ref_name: str, ref: list, **lists) -> None:
    torch._check_value(len(ref) > 0, lambda: f"{op}: {ref_name} is an empty list")
    for name, items in lists.items():
        torch._check_value(len(items) == len(ref),
                           lambda: f"{op}: {name} has {len(items)} tensors but {ref_name} has {len(ref)}")


def _float(op: str, name: str, t: Tensor) -> None:
    torch._check_type(t.dtype in _FLOATS,
                      lambda: f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def _shape_of(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    torch._check_value(t.shape == ref.shape, lambda: f"{op}: {name} has shape {tuple(t.shape)} but {ref_name} "
                                                     f"has shape {tuple(ref.shape)}")


def _stats_of(op: str, name: str, stats: list, params: list) -> None:
    """Per-param statistics: the param's shape and its statistics dtype (winnow.dtypes)."""
    for i, (s, p) in enumerate(zip(stats, params)):
        _shape_of(op, f"{name}[{i}]", s, f"params[{i}]", p)
        torch._check_type(s.dtype == stat_dtype(p.dtype), lambda: f"{op}: {name}[{i}] must be "
                          f"{stat_dtype(p.dtype)} for params[{i}] of dtype {p.dtype}, got {s.dtype}")


def _update_inputs(op: str, params, grads, nonfinite) -> None:
    for i, (p, g) in enumerate(zip(params, grads)):
        _float(op, f"params[{i}]", p)
        _shape_of(op, f"grads[{i}]", g, f"params[{i}]", p)
        torch._check_type(g.dtype == p.dtype, lambda: f"{op}: grads[{i}] has dtype {g.dtype} but params[{i}] "
                                                       f"has dtype {p.dtype}")
    torch._check_type(nonfinite.dtype == torch.int64, lambda: f"{op}: nonfinite must be an int64 tensor")
    torch._check_value(nonfinite.shape == (len(params),), lambda: f"{op}: nonfinite must be a contiguous 1-D "
                       f"tensor with one entry per tensor ({len(params)}), got shape {tuple(nonfinite.shape)}")


@torch.library.register_fake("winnow::importance_update_adalora")
def _importance_update_adalora_fake(params, grads, exp_avg_ipt, exp_avg_unc, beta1, beta2, nonfinite):
    op = "importance_update_adalora"
    _lengths(op, "params", params, grads=grads, exp_avg_ipt=exp_avg_ipt, exp_avg_unc=exp_avg_unc)
    _one_device(op, params=params, grads=grads, exp_avg_ipt=exp_avg_ipt, exp_avg_unc=exp_avg_unc,
                nonfinite=nonfinite)
    _update_inputs(op, params, grads, nonfinite)
    _stats_of(op, "exp_avg_ipt", exp_avg_ipt, params)
    _stats_of(op, "exp_avg_unc", exp_avg_unc, params)


@torch.library.register_fake("winnow::importance_update_id3")
def _importance_update_id3_fake(params, grads, scores, unmasked, eps, exponent, beta, nonfinite):
    op = "importance_update_id3"
    _lengths(op, "params", params, grads=grads, scores=scores)
    if unmasked:
        _lengths(op, "params", params, unmasked=unmasked)
    _one_device(op, params=params, grads=grads, scores=scores, unmasked=unmasked, nonfinite=nonfinite)
    _update_inputs(op, params, grads, nonfinite)
    _stats_of(op, "scores", scores, params)
    for i, (m, p) in enumerate(zip(unmasked, params)):
        torch._check_type(m.dtype == torch.bool, lambda: f"{op}: unmasked[{i}] must be a bool tensor")
        _shape_of(op, f"unmasked[{i}]", m, f"params[{i}]", p)


@torch.library.register_fake("winnow::importance_score")
def _importance_score_fake(exp_avg_ipt, exp_avg_unc, mean_dims):
    op = "importance_score"
    _lengths(op, "exp_avg_ipt", exp_avg_ipt, exp_avg_unc=exp_avg_unc, mean_dims=mean_dims)
    _one_device(op, exp_avg_ipt=exp_avg_ipt, exp_avg_unc=exp_avg_unc)
    for i, (a, u, d) in enumerate(zip(exp_avg_ipt, exp_avg_unc, mean_dims)):
        torch._check_type(a.dtype in (torch.float32, torch.float64),
                          lambda: f"{op}: exp_avg_ipt[{i}] must be float32 or float64, got {a.dtype}")
        _shape_of(op, f"exp_avg_unc[{i}]", u, f"exp_avg_ipt[{i}]", a)
        torch._check_value(d in (-1, 0, 1), lambda: f"{op}: mean_dims[{i}] must be -1 (none), 0 or 1, got {d}")
        torch._check_value(d == -1 or a.dim() == 2,
                           lambda: f"{op}: mean_dims[{i}] = {d} needs a 2-D tensor, got shape {tuple(a.shape)}")
    return [t.new_empty(t.shape if d == -1 else (t.shape[1 - d],)) for t, d in zip(exp_avg_ipt, mean_dims)]


@torch.library.register_fake("winnow::masked_adamw_step")
def _masked_adamw_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, active_blocks, block_steps,
                            block_sizes, lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, grad_scale=None,
                            found_inf=None):
    op = "masked_adamw_step"
    _lengths(op, "params", params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
             active_blocks=active_blocks, block_steps=block_steps, block_sizes=block_sizes)
    torch._check_value(len(max_exp_avg_sqs) == (len(params) if amsgrad else 0),
                       lambda: f"{op}: max_exp_avg_sqs has {len(max_exp_avg_sqs)} tensors but params has "
                               f"{len(params) if amsgrad else 0}")
    _one_device(op, params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                max_exp_avg_sqs=max_exp_avg_sqs, active_blocks=active_blocks, block_steps=block_steps)
    states = [("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)] + ([("max_exp_avg_sqs", max_exp_avg_sqs)]
                                                                       if amsgrad else [])
    for i, (p, g, blocks, steps, bs) in enumerate(zip(params, grads, active_blocks, block_steps, block_sizes)):
        _float(op, f"params[{i}]", p)
        _shape_of(op, f"grads[{i}]", g, f"params[{i}]", p)
        torch._check_value(bs >= 1, lambda: f"{op}: block_sizes[{i}] must be >= 1, got {bs}")
        torch._check_type(blocks.dtype == torch.int64, lambda: f"{op}: active_blocks[{i}] must be an int64 tensor")
        torch._check_type(steps.dtype == torch.int32, lambda: f"{op}: block_steps[{i}] must be an int32 tensor")
        torch._check_value(steps.numel() == blocks.numel(), lambda: f"{op}: block_steps[{i}] must be a contiguous "
                           f"1-D tensor with one entry per active block ({blocks.numel()})")
        for name, lst in states:
            t = lst[i]
            torch._check_type(t.dtype == stat_dtype(p.dtype), lambda: f"{op}: {name}[{i}] must be "
                              f"{stat_dtype(p.dtype)} for params[{i}] of dtype {p.dtype}, got {t.dtype}")
            torch._check_value(t.numel() == blocks.numel() * bs, lambda: f"{op}: {name}[{i}] must be a contiguous "
                               f"tensor of active_blocks[{i}].numel() * block_sizes[{i}] elements")


@torch.library.register_fake("winnow::rank_prune")
def _rank_prune_fake(lora_E, ipt_E, unc_E, ipt_A, unc_A, ipt_B, unc_B, num_masked):
    op = "rank_prune"
    _lengths(op, "lora_E", lora_E, ipt_E=ipt_E, unc_E=unc_E, ipt_A=ipt_A, unc_A=unc_A, ipt_B=ipt_B, unc_B=unc_B)
    _one_device(op, lora_E=lora_E, ipt_E=ipt_E, unc_E=unc_E, ipt_A=ipt_A, unc_A=unc_A, ipt_B=ipt_B, unc_B=unc_B)
    total = 0
    for m, (e, a, b) in enumerate(zip(lora_E, ipt_A, ipt_B)):
        torch._check_value(e.dim() == 2 and e.shape[1] == 1,
                           lambda: f"{op}: lora_E[{m}] must be a contiguous [r, 1] tensor, got shape {tuple(e.shape)}")
        r = e.shape[0]
        torch._check_value(a.dim() == 2 and b.dim() == 2, lambda: f"{op}: ipt_A[{m}] and ipt_B[{m}] must be 2-D")
        for name, t, shape in (("ipt_E", ipt_E[m], (r, 1)), ("unc_E", unc_E[m], (r, 1)),
                               ("ipt_A", a, (r, a.shape[1])), ("unc_A", unc_A[m], (r, a.shape[1])),
                               ("ipt_B", b, (b.shape[0], r)), ("unc_B", unc_B[m], (b.shape[0], r))):
            torch._check_type(t.dtype == ipt_E[0].dtype, lambda: f"{op}: {name}[{m}] must be {ipt_E[0].dtype} "
                              f"like the other statistics, got {t.dtype}")
            torch._check_value(tuple(t.shape) == shape, lambda: f"{op}: {name}[{m}] must have shape "
                               f"[{shape[0]}, {shape[1]}], got {tuple(t.shape)}")
        total += r
    torch._check_value(0 <= num_masked <= total,
                       lambda: f"{op}: num_masked must be in [0, {total}] (the number of triplets), got {num_masked}")
    return ipt_E[0].new_empty((total,)), ipt_E[0].new_empty((total,), dtype=torch.bool)


@torch.library.register_fake("winnow::masked_topk")
def _masked_topk_fake(scores, unmasked, k):
    op = "masked_topk"
    torch._check_value(len(scores) > 0, lambda: f"{op}: scores is an empty list")
    _one_device(op, scores=scores, unmasked=unmasked)
    dtype = scores[0].dtype
    torch._check_type(dtype in (torch.float32, torch.float64), lambda: f"{op}: scores must be float32 or float64, "
                                                                        f"got {dtype}")
    for i, s in enumerate(scores):
        torch._check_type(s.dtype == dtype, lambda: f"{op}: scores[{i}] has dtype {s.dtype} but scores[0] has "
                                                     f"{dtype} (one dtype per call)")
    return _selection(op, "scores", scores, unmasked, k)


def _selection(op: str, name: str, tensors, unmasked, k):
    """A top-k's masks (optional, one bool tensor shaped like each of `tensors`), k's range, and
    its outputs: one int64 index tensor per tensor, of data-dependent length."""
    if unmasked:
        _lengths(op, name, tensors, unmasked=unmasked)
        for i, (m, t) in enumerate(zip(unmasked, tensors)):
            torch._check_type(m.dtype == torch.bool, lambda: f"{op}: unmasked[{i}] must be a bool tensor")
            _shape_of(op, f"unmasked[{i}]", m, f"{name}[{i}]", t)
    total = sum(t.numel() for t in tensors)
    torch._check_value(0 <= k <= total, lambda: f"{op}: k must be in [0, {total}], got {k}")
    ctx = torch.library.get_ctx()
    return [t.new_empty((ctx.new_dynamic_size(),), dtype=torch.int64) for t in tensors]


torch.library.register_fake("winnow::_masked_topk_aten")(_masked_topk_fake)


@torch.library.register_fake("winnow::_masked_topk_id3")
def _masked_topk_id3_fake(params, grads, unmasked, k, eps, exponent):
    op = "_masked_topk_id3"
    torch._check_value(len(params) > 0, lambda: f"{op}: params is an empty list")
    _one_device(op, params=params, grads=grads, unmasked=unmasked)
    _lengths(op, "params", params, grads=grads)
    wide = params[0].dtype == torch.float64
    for i, (p, g) in enumerate(zip(params, grads)):
        _float(op, f"params[{i}]", p)
        _float(op, f"grads[{i}]", g)
        _shape_of(op, f"grads[{i}]", g, f"params[{i}]", p)
        torch._check_type(g.dtype == p.dtype, lambda: f"{op}: grads[{i}] has dtype {g.dtype} but params[{i}] has "
                                                      f"dtype {p.dtype}")
        torch._check_type((p.dtype == torch.float64) == wide,
                          lambda: f"{op}: params[{i}] is {p.dtype} but params[0] is {params[0].dtype}")
    return _selection(op, "params", params, unmasked, k)


@torch.library.register_fake("winnow::_masked_topk_id3_from")
def _masked_topk_id3_from_fake(params, grads, unmasked, k, eps, exponent, at_least):
    return _masked_topk_id3_fake(params, grads, unmasked, k, eps, exponent), params[0].new_empty((), dtype=torch.float64)


def _chosen(op: str, chosen) -> None:
    for i, c in enumerate(chosen):
        torch._check_type(c.dtype == torch.int64 and c.dim() == 1, lambda: f"{op}: chosen[{i}] must be a 1-D int64 "
                                                                           f"tensor")


@torch.library.register_fake("winnow::_id3_unmask")
def _id3_unmask_fake(params, chosen, active_blocks, block_steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs):
    op = "_id3_unmask"
    for name, lst in (("chosen", chosen), ("active_blocks", active_blocks), ("block_steps", block_steps),
                      ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        torch._check_value(len(lst) == len(params), lambda: f"{op}: {name} has {len(lst)} tensors but params has "
                                                            f"{len(params)}")
    torch._check_value(len(max_exp_avg_sqs) in (0, len(params)),
                       lambda: f"{op}: max_exp_avg_sqs has {len(max_exp_avg_sqs)} tensors but params has "
                               f"{len(params)} (or pass none)")
    _chosen(op, chosen)
    grow = lambda ts: [t.new_empty((t.numel() + c.numel(),)) for t, c in zip(ts, chosen)]  # noqa: E731
    return ([p.new_empty((c.numel(),)) for p, c in zip(params, chosen)], grow(active_blocks), grow(block_steps),
            grow(exp_avgs), grow(exp_avg_sqs), grow(max_exp_avg_sqs))


@torch.library.register_fake("winnow::_id3_mark_unmasked")
def _id3_mark_unmasked_fake(unmasked, chosen):
    op = "_id3_mark_unmasked"
    torch._check_value(len(chosen) == len(unmasked), lambda: f"{op}: chosen has {len(chosen)} tensors but unmasked "
                                                             f"has {len(unmasked)}")
    _chosen(op, chosen)
    for i, m in enumerate(unmasked):
        torch._check_type(m.dtype == torch.bool, lambda: f"{op}: unmasked[{i}] must be a bool tensor")


def _like_first(op: str, **named) -> Tensor:
    """Same-shaped elementwise inputs (checks::like_first): float, with the first one's dtype and shape."""
    (first_name, first), *_ = named.items()
    _one_device(op, **named)
    for name, t in named.items():
        _float(op, name, t)
        torch._check_type(t.dtype == first.dtype, lambda: f"{op}: {name} is {t.dtype} but {first_name} is "
                                                           f"{first.dtype}")
        _shape_of(op, name, t, first_name, first)
    return torch.empty_like(first, memory_format=torch.contiguous_format)


@torch.library.register_fake("winnow::act_tangent")
def _act_tangent_fake(z, dz, kind):
    torch._check_value(0 <= kind < 5, lambda: f"act_tangent: kind must be one of 0..4, got {kind}")
    return _like_first("act_tangent", z=z, dz=dz), torch.empty_like(z, memory_format=torch.contiguous_format)


@torch.library.register_fake("winnow::act_tangent_backward")
def _act_tangent_backward_fake(z, dz, gy, gdy, kind):
    torch._check_value(0 <= kind < 5, lambda: f"act_tangent_backward: kind must be one of 0..4, got {kind}")
    return _like_first("act_tangent_backward", z=z, dz=dz, gy=gy, gdy=gdy), \
        torch.empty_like(z, memory_format=torch.contiguous_format)


@torch.library.register_fake("winnow::oba_score_accumulate")
def _oba_score_accumulate_fake(thetas, h_thetas, scores):
    op = "oba_score_accumulate"
    _lengths(op, "thetas", thetas, h_thetas=h_thetas, scores=scores)
    _one_device(op, thetas=thetas, h_thetas=h_thetas, scores=scores)
    for i, (t, h, s) in enumerate(zip(thetas, h_thetas, scores)):
        _float(op, f"thetas[{i}]", t)
        _shape_of(op, f"h_thetas[{i}]", h, f"thetas[{i}]", t)
        torch._check_type(h.dtype == t.dtype, lambda: f"{op}: h_thetas[{i}] is {h.dtype} but thetas[{i}] is {t.dtype}")
        torch._check_type(s.dtype == torch.float64, lambda: f"{op}: scores[{i}] must be float64, got {s.dtype}")
        _shape_of(op, f"scores[{i}]", s, f"thetas[{i}]", t)


@torch.library.register_fake("winnow::oba_channel_sums")
def _oba_channel_sums_fake(scores, groups):
    op = "oba_channel_sums"
    torch._check_type(scores.dtype == torch.float64, lambda: f"{op}: scores must be float64, got {scores.dtype}")
    torch._check_value(scores.dim() >= 2, lambda: f"{op}: scores must have at least 2 dims (rows, columns, ...), "
                                                  f"got shape {tuple(scores.shape)}")
    torch._check_value(groups >= 1, lambda: f"{op}: groups must be >= 1, got {groups}")
    torch._check_value(scores.shape[0] % groups == 0, lambda: f"{op}: dim 0 of scores ({scores.shape[0]}) must be "
                                                               f"divisible by groups ({groups})")
    return scores.new_empty((scores.shape[0],)), scores.new_empty((groups * scores.shape[1],))


@torch.library.register_fake("winnow::softmax_tangent")
def _softmax_tangent_fake(p, ds):
    return _like_first("softmax_tangent", p=p, ds=ds)


@torch.library.register_fake("winnow::softmax_tangent_backward")
def _softmax_tangent_backward_fake(p, ds, g):
    return _like_first("softmax_tangent_backward", p=p, ds=ds, g=g), \
        torch.empty_like(p, memory_format=torch.contiguous_format)
