"""The fast path for OBA's H theta: reverse over a hand-written forward tangent, no double backward.

Move every parameter along itself (v = theta) and carry each activation's tangent next to its
value. For a layer affine in its input and linear in its parameters (Linear, Conv, BatchNorm in
eval mode) the tangent is d/de f(x + e x'; (1 + e) theta) = f(x + x'; theta): the same layer on
the doubled batch [x, x + x'], one pass. Elementwise activations carry sigma'(z) z', max pooling
gathers the tangent at the argmax, linear parameter-free ops apply to the tangent as they are.
The loss's tangent L' = grad_z L . z' comes from one first-order derivative through the loss
alone. Then, exactly, grad_theta L' = H theta + g, so H theta = grad_theta (L' - L): a single
backward pass over a graph twice the batch, about 2x a gradient (double backward costs ~3x).

Models are read with torch.fx; a module or function without a rule here raises Unsupported and
the caller falls back to double backward. Attention (nn.MultiheadAttention and
F.scaled_dot_product_attention, masks included) carries the softmax's tangent through winnow's
fused softmax_tangent kernel, without the n x n Jacobian.
"""
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from winnow import ops
from winnow.hvp import _scalar_loss, _with_grad, _zeros_for_none


class Unsupported(Exception):
    """The model has a layer the fast path has no tangent rule for."""


def _affine_in_params(module: nn.Module) -> bool:
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return True
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        # eval mode: (x - running mean) / running std is affine in x, gamma and beta enter linearly
        return not module.training and module.track_running_stats
    return False


def _activation(kind: str, m: nn.Module | None, fn, x: torch.Tensor, dx: torch.Tensor | None):
    """(sigma(x), sigma'(x) x'): winnow's fused act_tangent kernel (value and tangent in one pass,
    its backward with the curvature term in one more; the math lives in act_tangent.h)."""
    if kind == "gelu" and m is not None and m.approximate != "none":
        raise Unsupported("GELU(approximate='tanh')")
    if dx is None:
        return fn(x), None
    if kind == "leaky_relu":  # piecewise linear: sigma' is a constant per side, no curvature
        return fn(x), torch.where(x > 0, dx, dx * m.negative_slope)
    return ops.act_tangent(x, dx, kind)


_ACT_MODULES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
                nn.SiLU: "silu", nn.GELU: "gelu"}
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", torch.sigmoid: "sigmoid",
                  F.silu: "silu", F.gelu: "gelu"}
# parameter-free and linear in their tensor inputs: the tangent goes through the same op
_LINEAR_MODULES = (nn.Flatten, nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                   nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Dropout)
_LINEAR_FUNCTIONS = {torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d, torch.cat, operator.getitem}
_LINEAR_METHODS = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous", "mean", "sum",
                   "squeeze", "repeat", "expand", "chunk", "split", "unbind", "movedim",
                   "unsqueeze"}


def _normalized_tangent(x, dx, dims, eps):
    """J_norm(x) x' of (x - mean) / sqrt(var + eps) over `dims`, from the batch statistics."""
    mu = x.mean(dims, keepdim=True)
    s = torch.sqrt(x.var(dims, keepdim=True, unbiased=False) + eps)
    n = (x - mu) / s
    return (dx - dx.mean(dims, keepdim=True) - n * (n * dx).mean(dims, keepdim=True)) / s


def _layer_norm_tangent(m: nn.LayerNorm, x, dx, y):
    """y' = y + gamma * J_norm(x) x' (the parameter part of the tangent is y itself, or nothing
    without elementwise affine parameters)."""
    param_part = y if m.weight is not None or m.bias is not None else None
    if dx is None:
        return param_part
    jn = _normalized_tangent(x, dx, tuple(range(-len(m.normalized_shape), 0)), m.eps)
    jn = m.weight * jn if m.weight is not None else jn
    return jn if param_part is None else param_part + jn


def _additive_mask(mask: torch.Tensor | None, true_means_keep: bool, dtype) -> torch.Tensor | None:
    """A boolean or additive attention mask as an additive float mask (-inf where masked out)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    blocked = ~mask if true_means_keep else mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(blocked, float("-inf"))


def _attention_core(q, k, v, dq, dk, dv, mask, scale):
    """Value and tangent of softmax(q k^T scale + mask) v over (..., L, d) heads. The softmax's
    tangent is winnow's fused softmax_tangent kernel, p * (s' - <p, s'>): never the n x n
    Jacobian. A tangent of None means zero; the mask is a constant. Returns (o, o', p, p')."""
    s = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        s = s + mask
    p = torch.softmax(s, dim=-1)
    parts = [dq @ k.transpose(-1, -2) if dq is not None else None, q @ dk.transpose(-1, -2) if dk is not None else None]
    parts = [t for t in parts if t is not None]
    dp = ops.softmax_tangent(p, sum(parts) * scale) if parts else None
    o = p @ v
    do = [t for t in (dp @ v if dp is not None else None, p @ dv if dv is not None else None) if t is not None]
    return o, (sum(do) if do else None), p, dp


def _sdpa_tangent(args, dargs, kwargs, dkwargs):
    """F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale) without
    dropout: boolean (True = attend) or additive masks, causal masking, a custom scale."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args))
    if set(kwargs) - set(names):
        raise Unsupported(f"scaled_dot_product_attention with {sorted(set(kwargs) - set(names))}")
    bound.update(kwargs)
    if bound.get("dropout_p", 0.0) or bound.get("enable_gqa", False):
        raise Unsupported("scaled_dot_product_attention with dropout or enable_gqa")
    q, k, v = bound["query"], bound["key"], bound["value"]
    dq, dk, dv = dargs[:3] if len(dargs) >= 3 else (None, None, None)
    if any(isinstance(d, torch.Tensor) for d in (*dargs[3:], *dkwargs.values())):
        raise Unsupported("scaled_dot_product_attention with a mask that depends on the parameters")
    mask = _additive_mask(bound.get("attn_mask"), True, q.dtype)
    if bound.get("is_causal", False):
        length, source = q.shape[-2], k.shape[-2]
        causal = torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
        mask = _additive_mask(causal, True, q.dtype) if mask is None else mask + _additive_mask(causal, True, q.dtype)
    scale = bound.get("scale") or q.shape[-1] ** -0.5
    o, do, _, _ = _attention_core(q, k, v, dq, dk, dv, mask, scale)
    return o, do


def _attention_tangent(m: nn.MultiheadAttention, args, dargs, kwargs, dkwargs):
    """nn.MultiheadAttention without dropout or extra k/v biases: value and tangent of the
    attention through the in/out projections (affine rule f(x + x')), masks included."""
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")
    bound = {"need_weights": True, "average_attn_weights": True, **dict(zip(names, args)), **kwargs}
    if set(bound) - set(names) or len(args) < 3:
        raise Unsupported("nn.MultiheadAttention called with unknown arguments")
    if m.bias_k is not None or m.add_zero_attn:
        raise Unsupported("nn.MultiheadAttention with add_bias_kv or add_zero_attn")
    if m.training and m.dropout > 0:
        raise Unsupported("nn.MultiheadAttention with dropout in train mode")
    if any(isinstance(d, torch.Tensor) for d in (*dargs[3:], *dkwargs.values())):
        raise Unsupported("nn.MultiheadAttention with a mask that depends on the parameters")
    e, h = m.embed_dim, m.num_heads
    if m._qkv_same_embed_dim:
        w = m.in_proj_weight.chunk(3)
    else:
        w = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    b = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None,) * 3

    def heads(t):  # (B, T, E) -> (B, h, T, d)
        return t.unflatten(-1, (h, e // h)).transpose(1, 2)

    def merge(t):  # (B, h, T, d) -> (B, T, E)
        return t.transpose(1, 2).flatten(2)

    xs = [a if m.batch_first else a.transpose(0, 1) for a in args[:3]]
    dxs = [None if d is None else (d if m.batch_first else d.transpose(0, 1)) for d in dargs[:3]]
    proj = [F.linear(x, wi, bi) for x, wi, bi in zip(xs, w, b)]
    # the parameters move along themselves, so every projection has a tangent: f(x + x') or f(x)
    dproj = [F.linear(x + dx, wi, bi) if dx is not None else pr for x, dx, wi, bi, pr in zip(xs, dxs, w, b, proj)]
    (q, k, v), (dq, dk, dv) = [heads(t) for t in proj], [heads(t) for t in dproj]
    mask = _additive_mask(bound.get("attn_mask"), False, q.dtype)
    if mask is not None and mask.dim() == 3:  # (B * h, L, S)
        mask = mask.view(q.shape[0], h, *mask.shape[1:])
    padding = _additive_mask(bound.get("key_padding_mask"), False, q.dtype)
    if padding is not None:  # (B, S)
        padding = padding[:, None, None, :]
        mask = padding if mask is None else mask + padding
    o, do, p, dp = _attention_core(q, k, v, dq, dk, dv, mask, (e // h) ** -0.5)
    o, do = merge(o), merge(do)
    out, dout = m.out_proj(o), m.out_proj(o + do)
    if not m.batch_first:
        out, dout = out.transpose(0, 1), dout.transpose(0, 1)
    if not bound["need_weights"]:
        return (out, None), (dout, None)
    if bound["average_attn_weights"]:
        p, dp = p.mean(1), dp.mean(1)
    return (out, p), (dout, dp)


def _batch_norm_tangent(m: nn.modules.batchnorm._BatchNorm, x, dx, y):
    """BatchNorm on batch statistics: y' = y (the affine parameters' part) + gamma * J_norm(x) x',
    the normalisation taken over every dim but the channel (dim 1)."""
    param_part = y if m.affine else None
    if dx is None:
        return param_part
    jn = _normalized_tangent(x, dx, [0] + list(range(2, x.dim())), m.eps)
    if m.affine:
        jn = jn * m.weight.view(1, -1, *([1] * (x.dim() - 2)))
    return jn if param_part is None else param_part + jn


class _TangentModel(nn.Module):
    """Runs the traced model on (value, tangent) pairs; returns z + eps * z', so that the caller's
    loss_fn sees the ordinary output at eps = 0 and dL/deps = grad_z L . z'."""

    def __init__(self, model: nn.Module, graph: fx.GraphModule, eps: torch.Tensor):
        super().__init__()
        self.model, self.graph, self.eps = model, graph, eps

    def forward(self, *args, **kwargs):
        if kwargs:
            raise Unsupported("keyword arguments to the model's forward")
        z, dz = self._run(args)
        if dz is None:
            raise Unsupported("the output does not depend on the parameters")
        return z + self.eps * dz

    def _run(self, args):
        env = {}
        modules = dict(self.graph.named_modules())
        inputs = iter(args)

        def val(a):
            return fx.node.map_arg(a, lambda n: env[n][0])

        def tan(a):  # constants (numbers, slices, dims) have no tangent: None, not themselves
            if isinstance(a, fx.Node):
                return env[a][1]
            if isinstance(a, (tuple, list)):
                return type(a)(tan(x) for x in a)
            if isinstance(a, dict):
                return {k: tan(x) for k, x in a.items()}
            return None

        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                env[node] = (next(inputs), None)
            elif node.op == "get_attr":  # a parameter moves along itself; buffers and constants do not move
                obj = self.graph
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                env[node] = (obj, obj if isinstance(obj, nn.Parameter) else None)
            elif node.op == "call_module" and isinstance(modules[node.target], nn.MultiheadAttention):
                env[node] = _attention_tangent(modules[node.target], val(node.args), tan(node.args), val(node.kwargs),
                                               tan(node.kwargs))
            elif node.op == "call_module":
                env[node] = self._module(modules[node.target], val(node.args[0]), tan(node.args[0]), node)
            elif node.op in ("call_function", "call_method"):
                env[node] = self._function(node, val(node.args), tan(node.args), val(node.kwargs), tan(node.kwargs))
            elif node.op == "output":
                out = node.args[0]
                if not isinstance(out, fx.Node):
                    raise Unsupported("a model output that is not one tensor")
                return env[out]
        raise Unsupported("no output")

    def _module(self, m: nn.Module, x, dx, node):
        if len(node.args) != 1 or node.kwargs:
            raise Unsupported(f"{type(m).__name__} called with several inputs")
        if _affine_in_params(m):
            if dx is None:  # the tangent is the parameter part alone: f(x; theta) = z
                z = m(x)
                return z, z
            return m(x), m(x + dx)
        if isinstance(m, nn.LayerNorm):
            y = m(x)
            return y, _layer_norm_tangent(m, x, dx, y)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # batch statistics (train mode)
            y = m(x)
            return y, _batch_norm_tangent(m, x, dx, y)
        kind = _ACT_MODULES.get(type(m))
        if kind is not None:
            return _activation(kind, m, m, x, dx)
        if isinstance(m, nn.MaxPool2d):
            y, idx = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
            if dx is None:
                return y, None
            return y, dx.flatten(2).gather(2, idx.flatten(2)).view_as(y)
        if isinstance(m, _LINEAR_MODULES):
            if isinstance(m, nn.Dropout) and m.training and m.p > 0:
                raise Unsupported("Dropout in train mode")
            return m(x), (None if dx is None else m(dx))
        raise Unsupported(type(m).__name__)

    def _function(self, node, args, dargs, kwargs, dkwargs):
        fn = node.target
        if node.op == "call_function" and fn is F.scaled_dot_product_attention:
            return _sdpa_tangent(args, dargs, kwargs, dkwargs)
        if node.op == "call_function" and fn in _ACT_FUNCTIONS:
            x, dx = args[0], dargs[0]
            if fn is F.gelu and kwargs.get("approximate", "none") != "none":
                raise Unsupported("gelu(approximate='tanh')")
            if len(args) > 1 or set(kwargs) - {"inplace", "approximate"}:
                raise Unsupported(f"{fn.__name__} with extra arguments")
            return _activation(_ACT_FUNCTIONS[fn], None, fn, x, dx)
        if node.op == "call_function" and fn in (operator.add, operator.iadd, torch.add, operator.sub, torch.sub):
            if kwargs:  # alpha=...
                raise Unsupported(f"{fn.__name__} with keyword arguments")
            y = fn(*args)
            ta = [d for d in dargs[:2]]
            if all(d is None for d in ta):
                return y, None
            sign = -1 if fn in (operator.sub, torch.sub) else 1
            a = ta[0] if ta[0] is not None else 0
            b = ta[1] if ta[1] is not None else 0
            return y, a + sign * b
        if node.op == "call_function" and fn in (operator.mul, torch.mul):
            (x1, x2), (d1, d2) = args[:2], dargs[:2]
            y = fn(x1, x2)
            parts = [d1 * x2 if d1 is not None else None, x1 * d2 if d2 is not None else None]
            parts = [p for p in parts if p is not None]
            return y, (sum(parts) if parts else None)
        linear = (node.op == "call_function" and fn in _LINEAR_FUNCTIONS) or \
                 (node.op == "call_method" and fn in _LINEAR_METHODS)
        if linear:
            call = (lambda *a, **k: getattr(a[0], fn)(*a[1:], **k)) if node.op == "call_method" else fn
            y = call(*args, **kwargs)
            if all(d is None for d in _flat(dargs)):
                return y, None
            if fn is torch.cat:
                ts = [d if d is not None else torch.zeros_like(v) for v, d in zip(args[0], dargs[0])]
                return y, torch.cat(ts, *args[1:], **kwargs)
            if dargs[0] is None:
                raise Unsupported(f"{fn} with a tangent in a non-leading argument")
            return y, call(dargs[0], *args[1:], **kwargs)
        raise Unsupported(f"{node.op} {getattr(fn, '__name__', fn)}")


def _flat(xs):
    out = []
    for x in xs:
        if isinstance(x, (list, tuple)):
            out += _flat(x)
        else:
            out.append(x)
    return out


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001  (any tracing failure means: not for the fast path)
        raise Unsupported(f"torch.fx cannot trace {type(model).__name__}: {e}") from e


def theta_hvp(model: nn.Module, loss_fn: Callable, batch, gradient_weight: float = 0.0,
              graph: fx.GraphModule | None = None) -> dict[str, torch.Tensor]:
    """{name: H theta + gradient_weight * g} over all of the model's parameters, for
    loss_fn(model, batch), from one backward pass. Raises Unsupported where a layer has no
    tangent rule."""
    graph = graph if graph is not None else trace(model)
    named = list(model.named_parameters())
    params = [p for _, p in named]
    eps = torch.zeros((), dtype=params[0].dtype, device=params[0].device, requires_grad=True)
    with _with_grad(params), torch.enable_grad():
        loss = _scalar_loss(loss_fn(_TangentModel(model, graph, eps), batch))
        (dloss,) = torch.autograd.grad(loss, eps, create_graph=True)
        target = dloss + (gradient_weight - 1.0) * loss  # grad dloss = H theta + g, grad loss = g
        out = torch.autograd.grad(target, params, allow_unused=True)
    return dict(zip((n for n, _ in named), _zeros_for_none(out, params)))
