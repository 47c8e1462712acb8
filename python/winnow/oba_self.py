"""curvature="self": each structure's own quadratic, 1/2 theta_S^T H_SS theta_S, exactly.

Per entry i of structure S the score is 1/2 theta_i (H_SS theta_S)_i, so a structure's entries sum
to its own quadratic: the second-order change of the loss when S alone is removed, without the
cross terms with every other structure that theta * (H theta) carries (winnow.oba).

One Hessian-vector product per structure, with v = theta on S and 0 elsewhere: the structures of
one module go through one batched double backward (autograd's is_grads_batched, i.e. vmap over
the directions), `max_elements` direction entries at a time. Every direction is its own product,
so the batching is exact: it is not the single product with all of a layer's channels at once,
which would add the cross terms between them.
"""
from collections.abc import Callable

import torch
from torch import nn

from winnow.hvp import _scalar_loss, _twice_differentiable, _with_grad
from winnow.oba_structures import Structures


def _batched_hvp(outputs, inputs, directions):
    """[H v_k for every direction k] as (k, *param) tensors (None for a zero block)."""
    try:
        return torch.autograd.grad(outputs, inputs, grad_outputs=directions, retain_graph=True,
                                   is_grads_batched=True, allow_unused=True)
    except RuntimeError:  # an op without a batching rule: one direction at a time
        per_k = [torch.autograd.grad(outputs, inputs, grad_outputs=[d[k] for d in directions], retain_graph=True,
                                     allow_unused=True) for k in range(directions[0].shape[0])]
        return [None if parts[0] is None else torch.stack(parts) for parts in zip(*per_k)]


def self_scores(model: nn.Module, loss_fn: Callable, batch, found: list[Structures], gradient_weight: float = 0.0,
                max_elements: int = 1 << 24) -> dict[str, torch.Tensor]:
    """{param name: 1/2 theta * (H_SS theta_S) + gradient_weight * theta * g} for every parameter
    of the structures `found`, on one batch."""
    named = dict(model.named_parameters())
    names = [n for s in found for n in s.owners]
    params = [named[n] for n in names]
    with _with_grad(params), torch.enable_grad(), _twice_differentiable():
        loss = _scalar_loss(loss_fn(model, batch))
        grads = dict(zip(names, torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)))
        scores = {}
        for s in found:
            scores.update(_structure_self_scores(s, named, grads, max_elements))
    for n in names:
        if gradient_weight and grads[n] is not None:
            scores[n] = scores[n] + gradient_weight * named[n].detach().double() * grads[n].detach().double()
    return scores


def _structure_self_scores(s: Structures, named, grads, max_elements: int) -> dict[str, torch.Tensor]:
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
        hv = _batched_hvp([grads[names[i]] for i in live], [named[n] for n in names], directions)
        for i, n in enumerate(names):
            if hv[i] is not None:  # entry i's own structure's product, at i
                own = torch.where(onehot[i], hv[i].double(), 0).sum(0)
                scores[n] += 0.5 * thetas[i].double() * own
    return scores
