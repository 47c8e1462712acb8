"""curvature="fisher": each structure's own quadratic estimated from per-example gradients,
1/2 mean over examples n of (theta_S . grad l_n)^2, in one forward and one backward pass.

For a layer whose output y is linear in the structure's parameters (a Linear / Conv channel's
row and bias, a norm's affine pair), theta_S . grad_S l_n = sum over positions of y * dl_n/dy
on the structure's channel: the output times its gradient, reduced per example and channel by
hooks. No per-example weight gradient is ever formed. A BatchNorm folded into its layer adds its
own output's term to the layer's.

Per entry i the score is 1/2 theta_i mean_n(a_n grad_i l_n), with a_n = theta_S . grad l_n, so a
structure's entries sum to its value: for a Linear / Conv weight that is the weight gradient of the
same layer with its output gradient scaled by a per example and channel (one extra weight-gradient
product per layer), for biases and affine pairs per-example channel sums.

Assumptions, stated where they are used: loss_fn averages over the examples along dim 0 of every
scored layer's output (grad l_n = N dL/dy_n), each scored module runs once per forward, and the
examples do not interact (BatchNorm in eval mode; in train mode the batch statistics couple them
and this is the per-example share of the batch gradient). nn.MultiheadAttention heads are not
covered (their projections run inside one functional call): use curvature="self" there.
"""
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from winnow.hvp import _scalar_loss, _with_grad
from winnow.oba_structures import Structures


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in at least float32: products of bf16 / fp16 activations are formed in float32 (float32
    and float64 tensors are used as they are: no full-size float64 copy)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def per_example_channel_sums(t: torch.Tensor, layout: int, count: int) -> torch.Tensor:
    """(N, count) float64 sums of t over every dim but the example dim (0) and the channels: dim 1
    (layout 0) or the last `layout` dims, flattened."""
    if layout == 0:
        t = t.movedim(1, -1)
    return t.reshape(t.shape[0], -1, count).sum(1, dtype=torch.float64)


def _channel_view(values: torch.Tensor, like: torch.Tensor, layout: int) -> torch.Tensor:
    """(N, C) or (C,) per-channel values shaped to broadcast against an output `like`."""
    lead = list(values.shape[:-1])
    if layout == 0:
        return values.view(*lead, values.shape[-1], *([1] * (like.dim() - 2)))
    middle = like.dim() - layout - len(lead)
    return values.view(*lead, *([1] * middle), *like.shape[like.dim() - layout:])


class _StructureState:
    """One structure's per-batch bookkeeping: the per-example contributions of the modules seen
    so far in backward, and the norm parts waiting for the full contribution."""

    def __init__(self, s: Structures):
        self.s = s
        self.a = None
        self.pending_norms = []
        self.calls = 0


def fisher_scores(model: nn.Module, loss_fn: Callable, batch, found: list[Structures],
                  gradient_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """{param name: 1/2 theta_i mean_n(a_n grad_i l_n) + gradient_weight * theta * g} for every
    parameter of the structures `found`, on one batch (0 for a module the forward does not run:
    removing it changes nothing)."""
    for s in found:
        if not s.modules:
            raise ValueError(f"curvature='fisher' does not cover {s.name!r} (nn.MultiheadAttention heads); "
                             "use curvature='self'")
    named = dict(model.named_parameters())
    names = [n for s in found for n in s.owners]
    scores = {n: torch.zeros(named[n].shape, dtype=torch.float64, device=named[n].device) for n in names}
    states = [_StructureState(s) for s in found]
    handles = []
    for state in states:
        for position, (mname, module, layout) in enumerate(state.s.modules):
            handles.append(module.register_forward_hook(
                _forward_hook(state, mname, module, layout, owner=(position == 0), scores=scores)))
    params = [named[n] for n in names]
    try:
        with _with_grad(params), torch.enable_grad():
            loss = _scalar_loss(loss_fn(model, batch))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    if gradient_weight:
        for n, g in zip(names, grads):
            if g is not None:
                scores[n] += gradient_weight * named[n].detach().double() * g.double()
    return scores


def _forward_hook(state: _StructureState, mname: str, module: nn.Module, layout: int, owner: bool, scores):
    prefix = f"{mname}." if mname else ""

    def hook(mod, args, out):
        if owner:
            state.calls += 1
            if state.calls > 1:
                raise ValueError(f"curvature='fisher': module {mname!r} runs more than once per forward "
                                 "(its per-example contributions would be split between the calls)")
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return
        x = args[0].detach() if owner else None  # the layer's input, for its weight gradient
        y = out.detach()

        def on_grad(delta):
            n, count = y.shape[0], state.s.count
            part = n * per_example_channel_sums(_wide(delta) * _wide(y), layout, count)
            if not owner:  # a folded norm: its part now, its scores once the layer's part is in
                state.a = part if state.a is None else state.a + part
                state.pending_norms.append((prefix, mod, layout, delta.detach(), y))
                return
            a = part if state.a is None else state.a + part
            if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
                _layer_scores(prefix, mod, x, delta, a, layout, scores)
            else:  # a norm channel no layer owns: its own affine pair
                _affine_scores(prefix, mod, y, delta, a, layout, scores)
            for norm_prefix, norm, norm_layout, norm_delta, norm_y in state.pending_norms:
                _affine_scores(norm_prefix, norm, norm_y, norm_delta, a, norm_layout, scores)
            state.a, state.pending_norms = None, []

        out.register_hook(on_grad)
        return out.clone()  # what runs next may write in place (torchvision's `out += identity`): not into y

    return hook


def _layer_scores(prefix, layer, x, delta, a, layout, scores) -> None:
    """A Linear / Conv layer's entries: 1/2 W * (its weight gradient with the output gradient
    scaled by a), 1/2 b * sum_n a_n (per-example bias gradient)."""
    weight = layer.weight.detach().to(x.dtype).requires_grad_(True)  # the input's dtype (autocast: bf16)
    with torch.enable_grad():
        out = _without_bias(layer, x, weight, delta.shape)
    scaled = delta * _channel_view(a, delta, layout).to(delta.dtype)
    (gw,) = torch.autograd.grad(out, weight, grad_outputs=scaled)
    scores[prefix + "weight"] += 0.5 * layer.weight.detach().double() * gw.double()
    if layer.bias is not None:
        b_sums = per_example_channel_sums(delta, layout, a.shape[1])
        scores[prefix + "bias"] += 0.5 * layer.bias.detach().double() * (a * b_sums).sum(0)


def _without_bias(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, shape) -> torch.Tensor:
    """The layer's output without its bias, as a function of `weight` (its weight gradient's
    graph), computed by the functional op: the module's hooks do not run again."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight)
    if not layer.transposed:
        return layer._conv_forward(x, weight, None)  # handles every padding_mode
    # a transposed conv's output size may have been chosen in forward (output_size=): read it from the output
    dims = len(layer.kernel_size)
    natural = [(x.shape[2 + i] - 1) * layer.stride[i] - 2 * layer.padding[i]
               + layer.dilation[i] * (layer.kernel_size[i] - 1) + 1 for i in range(dims)]
    output_padding = [shape[2 + i] - natural[i] for i in range(dims)]
    transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
    return transpose(x, weight, None, layer.stride, layer.padding, output_padding, layer.groups, layer.dilation)


def _affine_scores(prefix, norm, y, delta, a, layout, scores) -> None:
    """A norm's affine pair: y = gamma * n + beta per channel, so gamma's entry is
    1/2 sum_n a_n sum(delta * (y - beta)) and beta's 1/2 beta sum_n a_n sum(delta)."""
    count = a.shape[1]
    weight = scores[prefix + "weight"]
    beta = norm.bias.detach().double() if norm.bias is not None else None
    shift = 0 if beta is None else _channel_view(beta.flatten(), y, layout).to(_wide(y).dtype)
    gamma_sums = per_example_channel_sums(_wide(delta) * (_wide(y) - shift), layout, count)
    weight += 0.5 * (a * gamma_sums).sum(0).view(weight.shape)
    if beta is not None:
        beta_sums = per_example_channel_sums(delta, layout, count)
        scores[prefix + "bias"] += 0.5 * beta * (a * beta_sums).sum(0).view(beta.shape)
