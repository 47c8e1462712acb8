"""Typed entry points of winnow's kernels (torch.ops.winnow.*).

Validation lives once, in C++ (csrc/include/winnow/checks.h and each op's header), and raises
ValueError / TypeError naming the argument; this module only checks the Python-level types
that the dispatcher cannot see. The fake kernels (what torch.compile traces) are in fake_kernels.
"""
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from torch.autograd import forward_ad

from winnow.dtypes import stat_dtype

__all__ = [
    "importance_update_adalora", "importance_update_id3", "importance_score", "masked_adamw_step", "rank_prune",
    "masked_topk", "id3_topk", "act_tangent", "act_tangent_backward", "ACT_KINDS", "oba_score_accumulate",
    "oba_channel_sums", "softmax_tangent", "softmax_tangent_backward",
]

# act_tangent's `kind` (csrc/include/winnow/act_tangent.h holds the same table)
ACT_KINDS = {"relu": 0, "gelu": 1, "silu": 2, "tanh": 3, "sigmoid": 4}


def _tensor_list(name: str, tensors, allow_empty: bool = False) -> list[Tensor]:
    if isinstance(tensors, Tensor) or not isinstance(tensors, Iterable):
        raise TypeError(f"{name} must be a list of tensors, got {type(tensors).__name__}")
    out = list(tensors)
    for i, t in enumerate(out):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{i}] must be a tensor, got {type(t).__name__}")
    if not out and not allow_empty:
        raise ValueError(f"{name} is an empty list")
    return out


def _float(name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    return float(x)


def _counter(nonfinite) -> Tensor:
    if not isinstance(nonfinite, Tensor):
        raise TypeError(f"nonfinite must be an int64 tensor, got {type(nonfinite).__name__}")
    return nonfinite


def importance_update_adalora(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avg_ipt: Sequence[Tensor],
    exp_avg_unc: Sequence[Tensor],
    beta1: float,
    beta2: float,
    nonfinite: Tensor,
) -> None:
    """AdaLoRA sensitivity / uncertainty EMA, in place, for a list of tensors in one call.

    I = |p * g|; exp_avg_ipt = b1 * exp_avg_ipt + (1 - b1) * I;
    exp_avg_unc = b2 * exp_avg_unc + (1 - b2) * |I - exp_avg_ipt|  (exp_avg_ipt already updated).
    Elements whose I is not finite keep their statistics; nonfinite[i] (int64, one entry per
    tensor) is increased by the number of such elements of tensor i. Statistics are float32
    (float64 for float64 params) and contiguous; params/grads may be any float dtype or layout.
    """
    params = _tensor_list("params", params)
    torch.ops.winnow.importance_update_adalora(
        params,
        _tensor_list("grads", grads, allow_empty=True),
        _tensor_list("exp_avg_ipt", exp_avg_ipt, allow_empty=True),
        _tensor_list("exp_avg_unc", exp_avg_unc, allow_empty=True),
        _float("beta1", beta1),
        _float("beta2", beta2),
        _counter(nonfinite),
    )


def importance_update_id3(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    scores: Sequence[Tensor],
    unmasked: Sequence[Tensor] | None = None,
    *,
    eps: float = 1e-8,
    exponent: float = 1.0,
    beta: float = 0.0,
    nonfinite: Tensor,
) -> None:
    """ID3 importance H = |g| / (|p| + eps) ** exponent, in place into `scores`.

    With beta > 0 the scores are smoothed: scores = beta * scores + (1 - beta) * H. Entries
    where unmasked[i] is True (already unmasked) are neither read nor written. Non-finite H is
    skipped and counted in nonfinite, as in importance_update_adalora.
    """
    params = _tensor_list("params", params)
    masks = [] if unmasked is None else _tensor_list("unmasked", unmasked)
    torch.ops.winnow.importance_update_id3(
        params,
        _tensor_list("grads", grads, allow_empty=True),
        _tensor_list("scores", scores, allow_empty=True),
        masks,
        _float("eps", eps),
        _float("exponent", exponent),
        _float("beta", beta),
        _counter(nonfinite),
    )


def importance_score(
    exp_avg_ipt: Sequence[Tensor], exp_avg_unc: Sequence[Tensor], mean_dims: Sequence[int | None] | None = None
) -> list[Tensor]:
    """AdaLoRA element scores s = exp_avg_ipt * exp_avg_unc, for a list of tensors in one call.

    mean_dims[i] = None gives tensor i's element scores; 0 or 1 gives their mean over that dim of
    a 2-D tensor (peft: lora_B scores are averaged over dim 0, lora_A scores over dim 1).
    """
    ipt = _tensor_list("exp_avg_ipt", exp_avg_ipt)
    dims = [None] * len(ipt) if mean_dims is None else list(mean_dims)
    for i, d in enumerate(dims):
        if d is not None and (isinstance(d, bool) or not isinstance(d, int)):
            raise TypeError(f"mean_dims[{i}] must be None, 0 or 1, got {d!r}")
    return torch.ops.winnow.importance_score(
        ipt, _tensor_list("exp_avg_unc", exp_avg_unc, allow_empty=True), [-1 if d is None else d for d in dims]
    )


def masked_adamw_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    active_blocks: Sequence[Tensor],
    block_steps: Sequence[Tensor],
    block_sizes: Sequence[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool = False,
    maximize: bool = False,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One AdamW step (decoupled weight decay) on the active blocks of each parameter, in place.

    Parameter i is cut into blocks of block_sizes[i] elements; only the blocks listed in
    active_blocks[i] (int64) are read, updated and decayed, every other element is left
    bit-identical. The state is compact: exp_avgs[i] / exp_avg_sqs[i] (/ max_exp_avg_sqs[i] with
    amsgrad, else pass []) hold active_blocks[i].numel() * block_sizes[i] values, slot j for
    block active_blocks[i][j]; block_steps[i] (int32) is each block's own step count, raised by
    one here. grad_scale / found_inf (float32, one element) work like torch's fused AdamW:
    gradients are divided by grad_scale, and nothing at all happens when found_inf != 0.
    """
    params = _tensor_list("params", params)
    sizes = list(block_sizes)
    for i, b in enumerate(sizes):
        if isinstance(b, bool) or not isinstance(b, int):
            raise TypeError(f"block_sizes[{i}] must be an int, got {type(b).__name__}")
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a float32 tensor or None, got {type(t).__name__}")
    torch.ops.winnow.masked_adamw_step(
        params,
        _tensor_list("grads", grads, allow_empty=True),
        _tensor_list("exp_avgs", exp_avgs, allow_empty=True),
        _tensor_list("exp_avg_sqs", exp_avg_sqs, allow_empty=True),
        _tensor_list("max_exp_avg_sqs", max_exp_avg_sqs, allow_empty=True),
        _tensor_list("active_blocks", active_blocks, allow_empty=True),
        _tensor_list("block_steps", block_steps, allow_empty=True),
        sizes,
        _float("lr", lr),
        _float("beta1", beta1),
        _float("beta2", beta2),
        _float("weight_decay", weight_decay),
        _float("eps", eps),
        bool(amsgrad),
        bool(maximize),
        grad_scale,
        found_inf,
    )


def rank_prune(
    lora_E: Sequence[Tensor],
    ipt_E: Sequence[Tensor],
    unc_E: Sequence[Tensor],
    ipt_A: Sequence[Tensor],
    unc_A: Sequence[Tensor],
    ipt_B: Sequence[Tensor],
    unc_B: Sequence[Tensor],
    num_masked: int,
) -> tuple[Tensor, Tensor]:
    """AdaLoRA's budget step over every adapted module in one call.

    Module m has lora_E[m] of shape [r, 1], statistics of lora_A [r, in] and lora_B [out, r]
    (exp_avg_ipt / exp_avg_unc, float32 or float64). Triplet scores
    S = ipt_E*unc_E + (mean over A's row of ipt_A*unc_A + mean over B's column of ipt_B*unc_B);
    the num_masked-th smallest S over all modules is the threshold and lora_E is zeroed in place
    where S <= threshold (num_masked = 0 masks nothing). S ranks as a number with -0 == +0 and
    NaN (the empty mean of a zero-width module) lowest. Returns (scores, keep), both flat over
    all modules' triplets in order; nothing syncs with the host.
    """
    if isinstance(num_masked, bool) or not isinstance(num_masked, int):
        raise TypeError(f"num_masked must be an int, got {type(num_masked).__name__}")
    return torch.ops.winnow.rank_prune(
        _tensor_list("lora_E", lora_E),
        *(_tensor_list(n, t, allow_empty=True) for n, t in (
            ("ipt_E", ipt_E), ("unc_E", unc_E), ("ipt_A", ipt_A), ("unc_A", unc_A), ("ipt_B", ipt_B), ("unc_B", unc_B))),
        num_masked,
    )


def masked_topk(scores: Sequence[Tensor], unmasked: Sequence[Tensor] | None, k: int) -> list[Tensor]:
    """Global top-k over every still-masked entry (unmasked[i] False) of a list of score tensors.

    Returns, per tensor, the sorted flat int64 indices of its chosen entries (k in all, or every
    still-masked entry when there are fewer). Scores rank as numbers with -0 == +0 and NaN below
    every number; ties at the k-th value go to the lowest (tensor, element) index, so the choice
    is deterministic. Scores are float32 or float64 (one dtype per call); nothing is
    concatenated. One host sync on CUDA (the output sizes).
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    masks = [] if unmasked is None else _tensor_list("unmasked", unmasked)
    scores = _tensor_list("scores", scores)
    # Hand-written kernels for CPU and CUDA; elsewhere the same selection composed of ATen ops.
    kernel = scores[0].device.type in ("cpu", "cuda", "meta")
    op = torch.ops.winnow.masked_topk if kernel else torch.ops.winnow._masked_topk_aten
    return op(scores, masks, k)


def id3_topk(params: Sequence[Tensor], grads: Sequence[Tensor], unmasked: Sequence[Tensor] | None, k: int, *,
             eps: float = 1e-8, exponent: float = 1.0) -> list[Tensor]:
    """ID3's selection: masked_topk of H = |g| / (|p| + eps) ** exponent (computed in float32, or
    float64 for float64 parameters) over the still-masked entries (unmasked[i] False, shaped like
    params[i]; None: all of them); a non-finite H counts as 0 (as if the gradient were zero).
    Same result as importance_update_id3 into zeroed scores followed by
    masked_topk, which is what runs off the CPU; on the CPU one fused pass computes H tile by
    tile inside the selection, with no score buffer (9 bytes read per entry instead of 22)."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    params = _tensor_list("params", params)
    grads = _tensor_list("grads", grads, allow_empty=True)
    masks = [] if unmasked is None else _tensor_list("unmasked", unmasked)
    eps, exponent = _float("eps", eps), _float("exponent", exponent)
    if params[0].device.type in ("cpu", "meta"):
        return torch.ops.winnow._masked_topk_id3(params, grads, masks, k, eps, exponent)
    scores = [torch.zeros(p.shape, dtype=stat_dtype(p.dtype), device=p.device) for p in params]
    counts = torch.zeros(len(params), dtype=torch.int64, device=params[0].device)
    importance_update_id3(params, grads, scores, masks or None, eps=eps, exponent=exponent, beta=0.0,
                          nonfinite=counts)
    return masked_topk([s.view(-1) for s in scores], [m.view(-1) for m in masks] or None, k)


def oba_score_accumulate(thetas: Sequence[Tensor], h_thetas: Sequence[Tensor], scores: Sequence[Tensor]) -> None:
    """scores[i] += thetas[i] * h_thetas[i] in float64, in place, for every tensor in one call
    (OBA's per-parameter score epilogue; scores are float64 and contiguous)."""
    torch.ops.winnow.oba_score_accumulate(_tensor_list("thetas", thetas), _tensor_list("h_thetas", h_thetas),
                                          _tensor_list("scores", scores))


def oba_channel_sums(scores: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """(rows, cols) of a weight's float64 scores viewed as (dim 0, dim 1, rest): rows[a] sums
    row a; cols has groups * size(1) entries, the sum over each group's rows of its columns (a
    grouped conv's per-input-channel sums), in a fixed summation order."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a tensor, got {type(scores).__name__}")
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    return torch.ops.winnow.oba_channel_sums(scores, groups)


def _differentiable_call(op, tensors, *args):
    """op(*args) for an op whose autograd is registered from Python: past that wrapper (~8 us a
    call, more than a small input's math) when nothing can need it, i.e. no input requires grad
    and no torch.func transform, forward-mode AD level or torch.compile trace is active (those
    keep the registered path, and its errors)."""
    if (torch.compiler.is_compiling() or any(t.requires_grad for t in tensors)
            or torch._C._functorch.peek_interpreter_stack() is not None or forward_ad._current_level >= 0):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def softmax_tangent(p: Tensor, ds: Tensor) -> Tensor:
    """The softmax's forward tangent along the last dim, p * (ds - <p, ds>), from its output p
    and its input's tangent ds, without the n x n Jacobian. Differentiable (fused backward)."""
    if not isinstance(p, Tensor) or not isinstance(ds, Tensor):
        raise TypeError(f"p and ds must be tensors, got {type(p).__name__} and {type(ds).__name__}")
    return _differentiable_call(torch.ops.winnow.softmax_tangent.default, (p, ds), p, ds)


def softmax_tangent_backward(p: Tensor, ds: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """softmax_tangent's vector-Jacobian product in (p, ds) for the output gradient g, one pass
    per row: gp = g (ds - <p, ds>) - ds <g, p>, gds = p (g - <g, p>)."""
    for name, t in (("p", p), ("ds", ds), ("g", g)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    return torch.ops.winnow.softmax_tangent_backward(p, ds, g)


def _softmax_tangent_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _softmax_tangent_backward(ctx, g):
    p, ds = ctx.saved_tensors
    return softmax_tangent_backward(p, ds, g)


torch.library.register_autograd("winnow::softmax_tangent", _softmax_tangent_backward,
                                setup_context=_softmax_tangent_setup)


def _act_kind(kind) -> int:
    if kind not in ACT_KINDS:
        raise ValueError(f"kind must be one of {sorted(ACT_KINDS)}, got {kind!r}")
    return ACT_KINDS[kind]


def act_tangent(z: Tensor, dz: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """(f(z), f'(z) * dz) in one pass for the elementwise activation `kind` (relu, gelu (exact),
    silu, tanh, sigmoid): a value and its forward tangent. Differentiable: its backward is one
    fused pass too, gz = gy f'(z) + gdy f''(z) dz and gdz = gdy f'(z)."""
    if not isinstance(z, Tensor) or not isinstance(dz, Tensor):
        raise TypeError(f"z and dz must be tensors, got {type(z).__name__} and {type(dz).__name__}")
    return _differentiable_call(torch.ops.winnow.act_tangent.default, (z, dz), z, dz, _act_kind(kind))


def act_tangent_backward(z: Tensor, dz: Tensor, gy: Tensor, gdy: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """act_tangent's vector-Jacobian product for the gradients gy of f(z) and gdy of f'(z) dz, in
    one pass: gz = gy f'(z) + gdy f''(z) dz (the curvature term), gdz = gdy f'(z)."""
    for name, t in (("z", z), ("dz", dz), ("gy", gy), ("gdy", gdy)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    return torch.ops.winnow.act_tangent_backward(z, dz, gy, gdy, _act_kind(kind))


def _act_tangent_setup(ctx, inputs, output):
    z, dz, kind = inputs
    ctx.save_for_backward(z, dz)
    ctx.kind = kind  # the int code (the op's argument)


def _act_tangent_backward(ctx, gy, gdy):
    z, dz = ctx.saved_tensors
    gy = torch.zeros_like(z) if gy is None else gy
    gdy = torch.zeros_like(z) if gdy is None else gdy
    gz, gdz = torch.ops.winnow.act_tangent_backward(z, dz, gy, gdy, ctx.kind)
    return gz, gdz, None


torch.library.register_autograd("winnow::act_tangent", _act_tangent_backward, setup_context=_act_tangent_setup)


from winnow import fake_kernels  # noqa: E402,F401  (registers the fake kernels of every op)
