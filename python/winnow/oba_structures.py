"""The structures that structured pruning removes, as maps from parameter entries to structure ids.

A structure is what one pruning decision zeroes: a Linear / Conv output channel (its weight row
and bias, plus the affine pair of a BatchNorm that directly follows, as zeroing them is what
removes the channel's output), a norm layer's channel (its affine pair) when no Linear / Conv
owns it, or an nn.MultiheadAttention head (its q/k/v rows and biases and its out_proj columns).
`curvature="self"` and `"fisher"` (winnow.oba) score exactly these.
"""
from dataclasses import dataclass, field

import torch
from torch import fx, nn

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
_CHANNEL_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class Structures:
    """The structures of one module: `count` of them; `owners[param name]` is a LongTensor of the
    parameter's shape holding each entry's structure id. `modules` are the (name, module,
    channel layout) whose outputs carry the structures (Fisher's per-example contributions), the
    owning layer first; the layout is 0 for channels along dim 1 (Conv, BatchNorm, GroupNorm), k
    for channels spanning the last k dims (1 for Linear, LayerNorm's normalised dims)."""
    name: str
    count: int
    owners: dict[str, torch.Tensor] = field(default_factory=dict)
    modules: list = field(default_factory=list)


def following_batchnorms(model: nn.Module) -> dict[str, str]:
    """{Linear / Conv module name: name of the BatchNorm applied directly, and only, to its
    output}, read from a torch.fx trace; {} where the model cannot be traced."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001  (untraceable: no norm is folded into its layer)
        return {}
    modules = dict(model.named_modules())
    found = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0] if node.args else None
        if (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1
                and isinstance(modules.get(source.target), _CHANNEL_LAYERS) and modules[node.target].affine):
            found[source.target] = node.target
    return found


def _rows(n: int, shape) -> torch.Tensor:
    """Structure id = index along dim 0, broadcast over the other dims."""
    return torch.arange(n).view(-1, *([1] * (len(shape) - 1))).expand(shape)


def _layer_owners(m: nn.Module) -> tuple[int, torch.Tensor]:
    """(output channels, weight entry -> output channel) for Linear and Conv layers; transposed
    convs store (in, out / groups, ...), group after group."""
    w = m.weight
    if getattr(m, "transposed", False):
        groups = m.groups
        in_per_group, out_per_group = w.shape[0] // groups, w.shape[1]
        group = (torch.arange(w.shape[0]) // in_per_group).view(-1, 1)
        ids = group * out_per_group + torch.arange(out_per_group).view(1, -1)
        return out_per_group * groups, ids.view(*ids.shape, *([1] * (w.dim() - 2))).expand(w.shape)
    return w.shape[0], _rows(w.shape[0], w.shape)


def _norm_owners(m: nn.Module) -> tuple[int, torch.Tensor, int]:
    """(channels, affine entry -> channel, channel layout of its output)."""
    if isinstance(m, nn.LayerNorm):
        n = m.weight.numel()
        return n, torch.arange(n).view(m.weight.shape), len(m.normalized_shape)
    return m.weight.numel(), torch.arange(m.weight.numel()), 0


def _head_owners(m: nn.MultiheadAttention, prefix: str) -> dict[str, torch.Tensor]:
    h, d, e = m.num_heads, m.head_dim, m.embed_dim
    owners = {}
    if m._qkv_same_embed_dim:  # rows [q | k | v], d rows a head in each
        owners[prefix + "in_proj_weight"] = _rows(3 * e, m.in_proj_weight.shape) % e // d
    else:
        for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            w = getattr(m, name)
            owners[prefix + name] = _rows(w.shape[0], w.shape) // d
    if m.in_proj_bias is not None:
        owners[prefix + "in_proj_bias"] = torch.arange(3 * e) % e // d
    wo = m.out_proj.weight  # its input columns, grouped by head
    owners[prefix + "out_proj.weight"] = (torch.arange(wo.shape[1]) // d).view(1, -1).expand(wo.shape)
    return owners


def structures(model: nn.Module) -> list[Structures]:
    """Every structure of the model (see the module docstring); parameters outside them (an
    embedding, out_proj's bias, a bare nn.Parameter) belong to none."""
    folded = following_batchnorms(model)
    folded_norms = set(folded.values())
    modules = dict(model.named_modules())
    inside_attention = {f"{n}.out_proj" if n else "out_proj" for n, m in modules.items()
                        if isinstance(m, nn.MultiheadAttention)}
    found = []
    for name, m in modules.items():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.MultiheadAttention):
            found.append(Structures(name, m.num_heads, _head_owners(m, prefix)))
        elif isinstance(m, _CHANNEL_LAYERS) and name not in inside_attention:
            count, ids = _layer_owners(m)
            s = Structures(name, count, {prefix + "weight": ids},
                           [(name, m, 1 if isinstance(m, nn.Linear) else 0)])
            if m.bias is not None:
                s.owners[prefix + "bias"] = torch.arange(count)
            if name in folded:
                norm_name = folded[name]
                norm = modules[norm_name]
                s.owners[f"{norm_name}.weight"] = torch.arange(count)
                s.owners[f"{norm_name}.bias"] = torch.arange(count)
                s.modules.append((norm_name, norm, 0))
            found.append(s)
        elif isinstance(m, _NORMS) and name not in folded_norms and getattr(m, "weight", None) is not None:
            count, ids, layout = _norm_owners(m)
            s = Structures(name, count, {prefix + "weight": ids}, [(name, m, layout)])
            if m.bias is not None:
                s.owners[prefix + "bias"] = ids
            found.append(s)
    return found
