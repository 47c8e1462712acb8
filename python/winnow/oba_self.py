"""curvature="self": each structure's own quadratic, 1/2 theta_S^T H_SS theta_S, exactly.

Per entry i of structure S the score is 1/2 theta_i (H_SS theta_S)_i, so a structure's entries sum
to its own quadratic: the second-order change of the loss when S alone is removed, without the
cross terms with every other structure that theta * (H theta) carries (winnow.oba).

A Linear / Conv channel's parameters (and those of a BatchNorm folded into it), or a norm's
affine pair, reach the loss only through their module's output o, channel c. With t = J v the
output's tangent along v = theta_S (J = do/dtheta_S),

    H_SS v = J^T (d2L/do2) t + d/dtheta_S (dL/do . t)        (v held fixed in the second term)

and the second term vanishes where o is linear in theta_S (no folded norm). The Hessian of the
loss in o is all that needs a product per structure, one per channel, and those run in the
output space of the layer, from the layer to the loss: directions the size of an activation,
not of a weight, a module's channels batched by vmap (autograd's is_grads_batched), each its own
product (exact: not the single product with all channels at once, which adds their cross terms).
J^T, t (the double-vjp trick) and the second term (the local Hessian of dL/do . o, times v) are
local products through the module for all channels at once, since channels do not mix inside
it.

Attention heads and layers that run more than once per forward use the general route: one
Hessian-vector product in parameter space per structure, batched the same way.
"""
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from winnow.hvp import _scalar_loss, _twice_differentiable, _with_grad
from winnow.oba_structures import Structures


def _batched_grad(outputs, inputs, directions):
    """autograd.grad with a leading batch of grad_outputs (vmap); one at a time where an op has
    no batching rule."""
    if directions[0].shape[0] == 1:  # one direction: the plain product, no vmap
        out = torch.autograd.grad(outputs, inputs, grad_outputs=[d[0] for d in directions], retain_graph=True,
                                  allow_unused=True)
        return [None if t is None else t.unsqueeze(0) for t in out]
    try:
        return torch.autograd.grad(outputs, inputs, grad_outputs=directions, retain_graph=True,
                                   is_grads_batched=True, allow_unused=True)
    except RuntimeError:
        per_k = [torch.autograd.grad(outputs, inputs, grad_outputs=[d[k] for d in directions], retain_graph=True,
                                     allow_unused=True) for k in range(directions[0].shape[0])]
        return [None if parts[0] is None else torch.stack(parts) for parts in zip(*per_k)]


class _Capture:
    """Forward hooks that keep each structure's module input and its (last module's) output,
    the output handed on as a copy so that in-place ops downstream leave it as it was."""

    def __init__(self, found: list[Structures]):
        self.found, self.inputs, self.outputs, self.calls, self.handles = found, {}, {}, {}, []

    def __enter__(self):
        for s in self.found:
            first, last = s.modules[0][1], s.modules[-1][1]
            self.handles.append(first.register_forward_hook(self._input_hook(s), with_kwargs=True))
            self.handles.append(last.register_forward_hook(self._output_hook(s)))
        return self

    def _input_hook(self, s):
        def hook(mod, args, kwargs, out):  # the whole call: e.g. a transposed conv's output_size
            self.calls[s.name] = self.calls.get(s.name, 0) + 1
            self.inputs[s.name] = (tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), kwargs)
        return hook

    def _output_hook(self, s):
        def hook(mod, args, out):
            if isinstance(out, torch.Tensor):
                self.outputs[s.name] = out
                return out.clone()
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


def self_scores(model: nn.Module, loss_fn: Callable, batch, found: list[Structures], gradient_weight: float = 0.0,
                max_elements: int = 1 << 14) -> dict[str, torch.Tensor]:
    """{param name: 1/2 theta * (H_SS theta_S) + gradient_weight * theta * g} for every parameter
    of the structures `found`, on one batch; `max_elements` bounds each vmapped batch of
    directions (vmap pays where the rest of the network is short, e.g. ResNet-18's last stage:
    5x; through a deep rest it costs more than a loop: measured on 2 CPU cores)."""
    named = dict(model.named_parameters())
    names = [n for s in found for n in s.owners]
    params = [named[n] for n in names]
    scores = {}
    with _with_grad(params), torch.enable_grad(), _twice_differentiable(model):
        with _Capture([s for s in found if s.modules]) as seen:  # the forward only: not the local re-runs
            loss = _scalar_loss(loss_fn(model, batch))
        local = [s for s in found if s.modules and seen.calls.get(s.name) == 1 and s.name in seen.outputs
                 and seen.outputs[s.name].requires_grad]
        outputs = [seen.outputs[s.name] for s in local]
        grads = torch.autograd.grad(loss, params + outputs, create_graph=True, allow_unused=True)
        by_name = dict(zip(names, grads[:len(params)]))
        for s, o, g_o in zip(local, outputs, grads[len(params):]):
            scores.update(_output_space_scores(s, named, seen.inputs[s.name], o, g_o, max_elements))
        for s in found:
            if s not in local:
                scores.update(_parameter_space_scores(s, named, by_name, max_elements))
    for n in names:
        if gradient_weight and by_name[n] is not None:
            scores[n] = scores[n] + gradient_weight * named[n].detach().double() * by_name[n].detach().double()
    return scores


def _channel_masks(ids: torch.Tensor, like: torch.Tensor, layout: int) -> torch.Tensor:
    """(k, *like.shape) booleans: channel ids[j] of an output shaped `like` (layout as in
    winnow.oba_structures: channels along dim 1, or the last `layout` dims flattened)."""
    if layout == 0:
        channel = torch.arange(like.shape[1], device=like.device).view(1, -1, *([1] * (like.dim() - 2)))
    else:
        trailing = like.shape[like.dim() - layout:]
        channel = torch.arange(trailing.numel(), device=like.device).view(*([1] * (like.dim() - layout)), *trailing)
    return channel.unsqueeze(0) == ids.view(-1, *([1] * like.dim()))


def _local_output(s: Structures, call: tuple, leaves: dict[str, torch.Tensor]) -> torch.Tensor:
    """The structure's modules re-run on their captured call (args, kwargs) with its parameters
    as `leaves` (buffers copied: a BatchNorm in train mode updates copies, not the model's
    statistics)."""
    out = None
    for mname, module, _ in s.modules:
        prefix = f"{mname}." if mname else ""
        replaced = {k[len(prefix):]: v for k, v in leaves.items() if k.startswith(prefix) and
                    "." not in k[len(prefix):]}
        replaced.update({k: b.clone() for k, b in module.named_buffers(recurse=False)})
        out = functional_call(module, replaced, *call) if out is None else functional_call(module, replaced, (out,))
    return out


def _output_space_scores(s: Structures, named, call, o, g_o, max_elements) -> dict[str, torch.Tensor]:
    names = list(s.owners)
    leaves = {n: named[n].detach().requires_grad_(True) for n in names}
    thetas = [named[n].detach() for n in names]
    layout = s.modules[-1][2]
    linear = len(s.modules) == 1  # Linear / Conv / a norm alone: o is linear in theta_S, t = o
    if linear:
        o_local = _local_output(s, call, leaves)
        t = o_local
    else:  # t = J theta_S by the double-vjp trick (second order at most: BatchNorm has no third)
        o_local = _local_output(s, call, leaves)
        u = torch.zeros_like(o_local, requires_grad=True)
        jt_u = torch.autograd.grad(o_local, list(leaves.values()), grad_outputs=u, create_graph=True)
        t = torch.autograd.grad(sum((a * v).sum() for a, v in zip(jt_u, thetas)), u, retain_graph=True)[0]
    # W = sum over channels c of (d2L/do2 t_c) on channel c, t_c = t on channel c alone
    w = torch.zeros_like(o)
    if g_o is not None and g_o.requires_grad:
        t_fixed = t.detach()
        chunk = max(1, min(s.count, max_elements // max(1, o.numel())))
        for start in range(0, s.count, chunk):
            ids = torch.arange(start, min(start + chunk, s.count), device=o.device)
            masks = _channel_masks(ids, o, layout)
            (hu,) = _batched_grad([g_o], [o], [torch.where(masks, t_fixed, 0)])
            if hu is not None:
                w = w + torch.where(masks, hu, 0).sum(0)
    h = torch.autograd.grad(o_local, list(leaves.values()), grad_outputs=w.to(o_local.dtype), retain_graph=not linear,
                            allow_unused=True)
    if not linear and g_o is not None:  # d/dtheta (dL/do . J v) = the Hessian of dL/do . o(theta), times v
        local_grads = torch.autograd.grad((g_o.detach() * o_local).sum(), list(leaves.values()), create_graph=True)
        live = [(gr, v, leaf) for gr, v, leaf in zip(local_grads, thetas, leaves.values()) if gr.requires_grad]
        h2 = torch.autograd.grad(sum((gr * v).sum() for gr, v, _ in live), list(leaves.values()), allow_unused=True) \
            if live else [None] * len(h)
        h = [a if b is None else (b if a is None else a + b) for a, b in zip(h, h2)]
    return {n: 0.5 * th.double() * (torch.zeros_like(th) if hi is None else hi).double()
            for n, th, hi in zip(names, thetas, h)}


def _parameter_space_scores(s: Structures, named, grads, max_elements: int) -> dict[str, torch.Tensor]:
    """One Hessian-vector product per structure in parameter space (v = theta on S), the
    structures of a module batched; each entry keeps its own structure's product."""
    names = list(s.owners)
    thetas = [named[n].detach() for n in names]
    owners = [s.owners[n].to(t.device) for n, t in zip(names, thetas)]
    scores = {n: torch.zeros(t.shape, dtype=torch.float64, device=t.device) for n, t in zip(names, thetas)}
    # the blocks with curvature: a gradient that itself depends on the parameters
    live = [i for i, n in enumerate(names) if grads[n] is not None and grads[n].requires_grad]
    if not live:
        return scores
    chunk = max(1, min(s.count, max_elements // sum(t.numel() for t in thetas)))
    for start in range(0, s.count, chunk):
        ids = torch.arange(start, min(start + chunk, s.count), device=thetas[0].device)
        onehot = [o.unsqueeze(0) == ids.view(-1, *([1] * o.dim())) for o in owners]
        directions = [torch.where(onehot[i], thetas[i], 0) for i in live]
        hv = _batched_grad([grads[names[i]] for i in live], [named[n] for n in names], directions)
        for i, n in enumerate(names):
            if hv[i] is not None:
                own = torch.where(onehot[i], hv[i].double(), 0).sum(0)
                scores[n] += 0.5 * thetas[i].double() * own
    return scores
