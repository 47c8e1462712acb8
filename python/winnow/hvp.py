"""Exact Hessian-vector products of a loss with respect to a model's parameters.

`hvp(model, loss_fn, batch, vectors)` -> {name: (H v) block}: H is the Hessian of
`loss_fn(model, batch)` over the parameters named in `vectors` (all other parameters held fixed),
v the concatenation of `vectors`. The universal path is reverse-over-reverse (autograd double
backward): exact for every differentiable model, about 3x a gradient. `ggn_vp` gives the
Gauss-Newton part J^T H_out J v, which OBA's curvature mode subtracts.
"""
import contextlib
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def _hardsigmoid(x):
    return torch.clamp(x + 3, 0, 6) / 6


def _hardswish(x):
    return x * _hardsigmoid(x)


# torch's hardswish / hardsigmoid kernels have no double backward: the same functions written with
# clamp (twice differentiable) replace their outputs
_CLAMP_FORMS = {nn.Hardswish: _hardswish, nn.Hardsigmoid: _hardsigmoid}


@contextlib.contextmanager
def _twice_differentiable(model: nn.Module):
    """While differentiating twice: attention on the math backend (the fused flash and
    memory-efficient kernels have no double backward), Hardswish / Hardsigmoid recomputed in
    their clamp form out of place (prepended hooks: later hooks, e.g. OBA's linearisation, still
    see and replace the output). All restored after."""
    swapped = [m for m in model.modules() if type(m) in _CLAMP_FORMS]
    in_place = [m for m in swapped if m.inplace]
    handles = [m.register_forward_hook(lambda mod, args, out, fn=_CLAMP_FORMS[type(m)]: fn(args[0]), prepend=True)
               for m in swapped]
    try:
        for m in in_place:  # the hook recomputes from the input: it must not be overwritten
            m.inplace = False
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        for m in in_place:
            m.inplace = True
        for h in handles:
            h.remove()


def _resolve(model: nn.Module, vectors: Mapping[str, torch.Tensor]) -> tuple[list[str], list, list]:
    if not isinstance(vectors, Mapping) or len(vectors) == 0:
        raise ValueError("vectors must be a non-empty dict {parameter name: tensor}")
    named = dict(model.named_parameters())
    names, params, vecs = [], [], []
    for name, v in vectors.items():
        if name not in named:
            raise KeyError(f"vectors[{name!r}]: the model has no parameter of that name")
        p = named[name]
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"vectors[{name!r}] must be a tensor, got {type(v).__name__}")
        if v.shape != p.shape or v.dtype != p.dtype or v.device != p.device:
            raise ValueError(f"vectors[{name!r}] is {tuple(v.shape)} {v.dtype} on {v.device}; the parameter is "
                             f"{tuple(p.shape)} {p.dtype} on {p.device}")
        if not torch.isfinite(v).all():
            raise ValueError(f"vectors[{name!r}] holds NaN or inf")
        names.append(name)
        params.append(p)
        vecs.append(v.detach())
    return names, params, vecs


def _scalar_loss(loss) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    if not torch.isfinite(loss.detach()).all():
        raise ValueError(f"loss_fn returned a non-finite loss ({loss.item()})")
    if not loss.requires_grad:
        raise ValueError("loss_fn returned a loss that does not depend on any of the given parameters")
    return loss.reshape(())


@contextlib.contextmanager
def _with_grad(params):
    """Temporarily requires_grad on the parameters being differentiated (frozen ones included)."""
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, r in zip(params, saved):
            p.requires_grad_(r)


def _zeros_for_none(tensors, like):
    return [torch.zeros_like(p) if t is None else t for t, p in zip(tensors, like)]


def hvp_and_grad(model: nn.Module, loss_fn: Callable, batch, vectors: Mapping[str, torch.Tensor]):
    """({name: H v}, {name: gradient}) from one forward and a double backward."""
    names, params, vecs = _resolve(model, vectors)
    with _with_grad(params), torch.enable_grad(), _twice_differentiable(model):
        loss = _scalar_loss(loss_fn(model, batch))
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        pairs = [(g, v) for g, v in zip(grads, vecs) if g is not None and g.requires_grad]
        if pairs:
            dot = sum((g * v).sum() for g, v in pairs)
            hv = torch.autograd.grad(dot, params, allow_unused=True)
        else:  # the loss is linear in every given parameter: H = 0
            hv = [None] * len(params)
    hv = _zeros_for_none(hv, params)
    grads = _zeros_for_none([None if g is None else g.detach() for g in grads], params)
    return dict(zip(names, hv)), dict(zip(names, grads))


def hvp(model: nn.Module, loss_fn: Callable, batch, vectors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: block of H v}: the exact Hessian of loss_fn(model, batch) over the named parameters,
    times the vector given by `vectors` (double backward)."""
    return hvp_and_grad(model, loss_fn, batch, vectors)[0]


def _capture_output(model: nn.Module):
    """The model's forward output, caught by a hook while loss_fn runs (GGN needs the split
    parameters -> output -> loss)."""
    box = {}

    def hook(module, args, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError("curvature='oba' needs a model whose forward returns one tensor (the logits); "
                            f"{type(model).__name__} returned {type(out).__name__}")
        box["out"] = out

    return box, model.register_forward_hook(hook)


def ggn_vp(model: nn.Module, loss_fn: Callable, batch, vectors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: block of G v} with G = J^T H_z J the generalized Gauss-Newton matrix, z the model's
    output (loss_fn must call the model once): J v by the double-vjp trick, H_z (J v) by double
    backward through the loss, J^T by one more vjp. Exact."""
    names, params, vecs = _resolve(model, vectors)
    box, handle = _capture_output(model)
    try:
        with _with_grad(params), torch.enable_grad(), _twice_differentiable(model):
            loss = _scalar_loss(loss_fn(model, batch))
    finally:
        handle.remove()
    if "out" not in box:
        raise ValueError("loss_fn did not call the model's forward")
    z = box["out"]
    with torch.enable_grad():
        u = torch.zeros_like(z, requires_grad=True)
        jt_u = torch.autograd.grad(z, params, grad_outputs=u, create_graph=True, allow_unused=True)
        pairs = [(a, v) for a, v in zip(jt_u, vecs) if a is not None]
        jv = torch.autograd.grad(sum((a * v).sum() for a, v in pairs), u, retain_graph=True)[0]
        gz = torch.autograd.grad(loss, z, create_graph=True)[0]
        hz_jv = torch.autograd.grad((gz * jv.detach()).sum(), z, retain_graph=True, allow_unused=True)[0]
        if hz_jv is None:  # the loss is linear in the output
            hz_jv = torch.zeros_like(z)
        gv = torch.autograd.grad(z, params, grad_outputs=hz_jv.detach(), allow_unused=True)
    return dict(zip(names, _zeros_for_none(gv, params)))
