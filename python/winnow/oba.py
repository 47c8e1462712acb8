"""OBA (Optimal Brain Apoptosis): Hessian-based importance of parameters and structures.

Per parameter s_i = theta_i (H theta)_i, the second-order change of the loss when the whole
parameter vector moves by theta along i's coordinate (the removal step is delta theta = theta),
optionally plus the first-order term theta_i g_i; averaged over batches in float64.

curvature="full" (default) uses the exact Hessian. curvature="oba" follows the paper's
decomposition: the Gauss-Newton part J^T H_z J is left out (H - GGN keeps the curvature of the
network function itself, weighted by dL/dz) and so is the curvature of elementwise activation
modules (ReLU, GELU, SiLU, Tanh, Sigmoid, LeakyReLU, ELU: their derivative is held constant).
On ReLU networks the two simplifications coincide with theta * ((H - GGN) theta) in every layer,
last layer included. The paper's released code also linearises elementwise JVPs at the tangent
instead of the activation; that is a bug and is not reproduced.

Structures: `structure_scores` sums the scores per output channel / input channel / head, and
`OBAImportance` plugs them into Torch-Pruning (group reduction, per-group normalisation, one
global threshold), with `winnow.pruning.prune_iteratively` as the iterative re-score / prune schedule.
"""
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from winnow import ops
from winnow.hvp import ggn_vp, hvp_and_grad
from winnow.hvp_fast import Unsupported, theta_hvp, trace

CURVATURES = ("full", "oba")
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
                if getattr(m, "inplace", False):
                    raise ValueError(f"curvature='oba': in-place activation {type(m).__name__} is not supported; "
                                     "build the model with inplace=False")
                self.handles.append(m.register_forward_hook(
                    lambda mod, args, out, fn=fn: _linearised(fn, mod, args[0])))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


def _check_batches(batches) -> list:
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: scores are a mean over at least one batch")
    return batches


def parameter_scores(model: nn.Module, loss_fn: Callable, batches: Iterable, curvature: str = "full",
                     first_order: bool = False, params: Iterable[str] | None = None,
                     method: str = "auto") -> dict[str, torch.Tensor]:
    """{param name: float64 tensor of s_i = theta_i (H theta)_i (+ theta_i g_i)}, the mean over
    `batches` of each batch's scores. `loss_fn(model, batch)` returns a scalar loss; `params`
    picks parameters by name (default: every floating-point parameter). The model's train/eval
    mode is the caller's (BatchNorm in train mode uses batch statistics, as when training).

    method: "fast" = winnow.hvp_fast (reverse over a forward tangent, ~2x a gradient; full
    curvature over all parameters, layers with a tangent rule), "double_backward" = the
    universal path (~3x), "auto" = fast where it applies, else double backward."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    batches = _check_batches(batches)
    named = dict(model.named_parameters())
    names = list(params) if params is not None else [n for n, p in named.items() if p.is_floating_point()]
    if not names:
        raise ValueError("no parameters to score")
    for n in names:
        if n not in named:
            raise KeyError(f"params: the model has no parameter {n!r}")
        if not torch.isfinite(named[n]).all():
            raise ValueError(f"parameter {n!r} holds NaN or inf")
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
                h_theta = theta_hvp(model, loss_fn, batch, first_order=first_order, graph=graph)
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
        _accumulate(names, theta, h_theta, totals)
        if first_order:
            _accumulate(names, theta, grads, totals)
    return {n: s / len(batches) for n, s in totals.items()}


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
    + bias), "in": per input channel, "heads": per attention head (nn.MultiheadAttention: the
    head's q/k/v rows and bias and its out_proj columns)}} for Conv/Linear, norm layers ("out"
    only) and nn.MultiheadAttention."""
    result = {}
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        w, b = scores.get(prefix + "weight"), scores.get(prefix + "bias")
        if isinstance(m, nn.MultiheadAttention):
            result[mname] = {"heads": _head_sums(m, scores, prefix)}
        elif isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and w is not None:
            out, inp = _channel_sums(m, w)
            result[mname] = {"out": out + b if b is not None else out, "in": inp}
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
