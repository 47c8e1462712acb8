"""OBA (Optimal Brain Apoptosis): Hessian-based importance of parameters and structures.

Every score is a second-order Taylor estimate of what removing (zeroing) parameters costs: removal
is the step delta theta = -theta, so the loss changes by -theta . g + 1/2 theta^T H theta. Per
parameter i the score is 1/2 theta_i (C theta)_i for a curvature C, plus -theta_i g_i with
`first_order`; averaged over batches in float64. The curvatures (what a structure's summed score
then measures):

- "full": C = H, the exact Hessian: a structure's share of 1/2 theta^T H theta, the quadratic term
  for zeroing the *whole network*; it includes the structure's cross terms with every other
  structure. The authors' FastOBA score.
- "oba": the paper's decomposition, H minus the Gauss-Newton part J^T H_z J and minus the curvature
  of elementwise activation modules (ReLU, GELU, SiLU, Tanh, Sigmoid, LeakyReLU, ELU: their
  derivative is held constant). On ReLU networks this is (path degree - 1) theta * g per
  parameter: a path-weighted first-order Taylor score. The paper's released code also linearises
  elementwise JVPs at the tangent instead of the activation; that bug is not reproduced.
  OBAImportance's default: of the four it pruned best (README, the pruning study).
- "self": C = H_SS, each structure S's own diagonal block: the structure sums to
  1/2 theta_S^T H_SS theta_S, the second-order cost of removing S alone (winnow.oba_self).
- "fisher": the same quantity estimated as 1/2 mean over examples of (theta_S . grad l_n)^2, from
  one forward and backward pass (winnow.oba_fisher).

The structures of "self" and "fisher" are winnow.oba_structures': Linear / Conv output channels
(with a BatchNorm that directly follows), norm channels, attention heads; they score the
parameters of those structures and no others.

Structures: `structure_scores` sums the scores per output channel / input channel / head, and
`OBAImportance` plugs them into Torch-Pruning (group reduction, per-group normalisation, one
global threshold), with `winnow.pruning.prune_iteratively` as the iterative re-score / prune schedule.
"""
import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from winnow import ops
from winnow.hvp import _hardsigmoid, _hardswish, ggn_vp, hvp_and_grad
from winnow.hvp_fast import Unsupported, theta_hvp, trace
from winnow.oba_fisher import fisher_scores
from winnow.oba_self import self_scores
from winnow.oba_structures import following_batchnorms, structures

CURVATURES = ("full", "oba", "self", "fisher")
# the per-structure curvatures: their own code, over the structures' parameters only
_STRUCTURE_CURVATURES = {"self": self_scores, "fisher": fisher_scores}
METHODS = ("auto", "fast", "double_backward")

# Elementwise activations whose curvature the paper's decomposition drops: module -> functional.
_ACTIVATIONS = {
    nn.ReLU: lambda m, x: F.relu(x),
    nn.GELU: lambda m, x: F.gelu(x, approximate=m.approximate),
    nn.SiLU: lambda m, x: F.silu(x),
    nn.Tanh: lambda m, x: torch.tanh(x),
    nn.Sigmoid: lambda m, x: torch.sigmoid(x),
    nn.LeakyReLU: lambda m, x: F.leaky_relu(x, m.negative_slope),
    nn.ELU: lambda m, x: F.elu(x, m.alpha),
    nn.Hardswish: lambda m, x: _hardswish(x),
    nn.Hardsigmoid: lambda m, x: _hardsigmoid(x),
}


def _linearised(fn, module, x: torch.Tensor) -> torch.Tensor:
    """fn(x) in value and first derivative, with the derivative held constant: no second-order
    term flows through this activation."""
    with torch.enable_grad():
        xd = x.detach().requires_grad_(True)
        y = fn(module, xd)
        (d,) = torch.autograd.grad(y.sum(), xd)
    return y.detach() + (x - x.detach()) * d


class _NoActivationCurvature:
    def __init__(self, model: nn.Module):
        self.model = model
        self.handles = []

    def __enter__(self):
        for m in self.model.modules():
            fn = _ACTIVATIONS.get(type(m))
            if fn is not None:
                self.handles.append(m.register_forward_hook(
                    lambda mod, args, out, fn=fn: _linearised(fn, mod, args[0])))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


@contextlib.contextmanager
def _scoreable(model: nn.Module):
    """While scoring, modules with an `inplace` switch (torchvision's ReLU(inplace=True), Dropout,
    Hardswish...) compute out of place: the hooks and the linearised activations keep their
    inputs and outputs. Restored after."""
    switched = [m for m in model.modules() if getattr(m, "inplace", None) is True]
    try:
        for m in switched:
            m.inplace = False
        yield
    finally:
        for m in switched:
            m.inplace = True


def _check_batches(batches) -> list:
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: scores are a mean over at least one batch")
    return batches


def parameter_scores(model: nn.Module, loss_fn: Callable, batches: Iterable, curvature: str = "full",
                     first_order: bool = False, params: Iterable[str] | None = None,
                     method: str = "auto") -> dict[str, torch.Tensor]:
    """{param name: float64 tensor of 1/2 theta_i (C theta)_i (- theta_i g_i with first_order)},
    the mean over `batches` of each batch's scores (C: see the module docstring).
    `loss_fn(model, batch)` returns a scalar loss ("fisher": the mean over the batch's examples);
    `params` picks parameters by name (default: every floating-point parameter; for "self" and
    "fisher", the structures' parameters). The model's train/eval mode is the caller's
    (BatchNorm in train mode uses batch statistics, as when training).

    method ("full" and "oba"): "fast" = winnow.hvp_fast (reverse over a forward tangent, ~2x a
    gradient; full curvature over all parameters, layers with a tangent rule), "double_backward" =
    the universal path (~3x), "auto" = fast where it applies, else double backward."""
    with _scoreable(model):
        return _parameter_scores(model, loss_fn, batches, curvature, first_order, params, method)


def _parameter_scores(model, loss_fn, batches, curvature, first_order, params, method):
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    batches = _check_batches(batches)
    named = dict(model.named_parameters())
    if curvature in _STRUCTURE_CURVATURES:
        return _structure_curvature_scores(model, loss_fn, batches, curvature, first_order, params)
    names = list(params) if params is not None else [n for n, p in named.items() if p.is_floating_point()]
    _check_params(named, names)
    gradient_weight = -2.0 if first_order else 0.0  # 1/2 theta (H theta - 2 g) = 1/2 theta H theta - theta g
    totals = {n: torch.zeros(named[n].shape, dtype=torch.float64, device=named[n].device) for n in names}
    graph = None
    if method != "double_backward":
        try:
            if curvature != "full" or set(names) != set(named):
                raise Unsupported("the fast path scores every parameter with the full curvature")
            graph = trace(model)
        except Unsupported:
            if method == "fast":
                raise
    for batch in batches:
        theta = {n: named[n].detach() for n in names}
        if graph is not None:
            try:
                h_theta = theta_hvp(model, loss_fn, batch, gradient_weight=gradient_weight, graph=graph)
                _accumulate(names, theta, h_theta, totals)
                continue
            except Unsupported:
                if method == "fast":
                    raise
                graph = None
        if curvature == "full":
            h_theta, grads = hvp_and_grad(model, loss_fn, batch, theta)
        else:
            with _NoActivationCurvature(model):
                h_theta, grads = hvp_and_grad(model, loss_fn, batch, theta)
                g_theta = ggn_vp(model, loss_fn, batch, theta)
            h_theta = {n: h_theta[n] - g_theta[n] for n in names}
        if first_order:
            h_theta = {n: h_theta[n] + gradient_weight * grads[n] for n in names}
        _accumulate(names, theta, h_theta, totals)
    return {n: s / (2 * len(batches)) for n, s in totals.items()}


def _check_params(named: dict, names: list[str]) -> None:
    if not names:
        raise ValueError("no parameters to score")
    for n in names:
        if n not in named:
            raise KeyError(f"params: the model has no parameter {n!r}")
        if not torch.isfinite(named[n]).all():
            raise ValueError(f"parameter {n!r} holds NaN or inf")


def _structure_curvature_scores(model, loss_fn, batches, curvature, first_order, params):
    """"self" / "fisher": the scorer of each batch, over the structures' parameters (or the
    structures holding `params`)."""
    found = structures(model)
    if params is not None:
        wanted = set(params)
        unknown = wanted - {n for s in found for n in s.owners}
        if unknown:
            raise KeyError(f"params: {sorted(unknown)} belong to no structure curvature={curvature!r} scores "
                           "(Linear / Conv channels, norm channels, attention heads)")
        found = [s for s in found if wanted & set(s.owners)]
    if not found:
        raise ValueError(f"curvature={curvature!r}: the model has no Linear, Conv, norm or attention structures")
    named = dict(model.named_parameters())
    _check_params(named, [n for s in found for n in s.owners])
    score = _STRUCTURE_CURVATURES[curvature]
    totals = None
    for batch in batches:
        scores = score(model, loss_fn, batch, found, gradient_weight=-1.0 if first_order else 0.0)
        totals = scores if totals is None else {n: totals[n] + scores[n] for n in totals}
    totals = {n: t / len(batches) for n, t in totals.items()}
    return totals if params is None else {n: totals[n] for n in params}


def _accumulate(names, theta, h, totals) -> None:
    """totals += theta * h in float64, every parameter in one fused call (winnow.ops)."""
    ops.oba_score_accumulate([theta[n] for n in names], [h[n].to(theta[n].dtype) for n in names],
                             [totals[n] for n in names])


def _channel_sums(module: nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per output channel, per input channel) sums of weight-shaped scores, one fused read
    (winnow.ops.oba_channel_sums). Grouped convs: each group's input channels are its own.
    Transposed convs store (in, out / groups, ...), so their rows are the input channels."""
    if w.dim() == 1:
        raise ValueError(f"structure_scores: a {type(module).__name__} weight score must be at least 2-d")
    rows, cols = ops.oba_channel_sums(w.contiguous(), getattr(module, "groups", 1))
    return (cols, rows) if getattr(module, "transposed", False) else (rows, cols)


def structure_scores(model: nn.Module, scores: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Per-module sums of parameter scores: {module name: {"out": per output channel (weight rows
    + bias, + the affine pair of a BatchNorm applied directly to the output, as removing the
    channel zeroes it too), "in": per input channel, "heads": per attention head
    (nn.MultiheadAttention: the head's q/k/v rows and bias and its out_proj columns)}} for
    Conv/Linear, norm layers ("out" only: their own pair) and nn.MultiheadAttention."""
    result = {}
    folded = following_batchnorms(model)
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        w, b = scores.get(prefix + "weight"), scores.get(prefix + "bias")
        if isinstance(m, nn.MultiheadAttention):
            result[mname] = {"heads": _head_sums(m, scores, prefix)}
        elif isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and w is not None:
            out, inp = _channel_sums(m, w)
            for part in (b, scores.get(f"{folded[mname]}.weight") if mname in folded else None,
                         scores.get(f"{folded[mname]}.bias") if mname in folded else None):
                if part is not None:
                    out = out + part
            result[mname] = {"out": out, "in": inp}
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) and w is not None:
            result[mname] = {"out": (w + b if b is not None else w).flatten()}
    return result


def _head_sums(m: nn.MultiheadAttention, scores, prefix: str) -> torch.Tensor:
    """Per head: its q/k/v projection rows (and their biases) and its out_proj input columns."""
    h, d = m.num_heads, m.head_dim
    total = torch.zeros(h, dtype=torch.float64, device=m.out_proj.weight.device)
    names = ["in_proj_weight"] if m._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    for name in names:
        w = scores.get(prefix + name)
        if w is not None:  # rows: [q heads | k heads | v heads] (or one of them), d rows a head
            total += ops.oba_channel_sums(w.contiguous())[0].reshape(-1, h, d).sum(dim=(0, 2))
    b = scores.get(prefix + "in_proj_bias")
    if b is not None:
        total += b.reshape(3, h, d).sum(dim=(0, 2))
    wo = scores.get(prefix + "out_proj.weight")
    if wo is not None:  # columns grouped by head
        total += ops.oba_channel_sums(wo.contiguous())[1].reshape(h, d).sum(1)
    return total


def unstructured_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """{name: bool mask, True = keep}: one global threshold on |s| removing the `sparsity`
    fraction of all scored entries (ties at the threshold are removed)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if not scores:
        raise ValueError("scores is empty")
    flat = torch.cat([s.abs().flatten() for s in scores.values()])
    k = int(sparsity * flat.numel())
    if k == 0:
        return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    threshold = flat.kthvalue(k).values
    return {n: s.abs() > threshold for n, s in scores.items()}
