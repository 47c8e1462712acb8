"""Where a DTensor parameter's local shard sits in the full parameter (FSDP2's `fully_shard`), for
an optimizer that addresses the full parameter by blocks of its flattened elements.

FSDP2 shards a parameter along dim 0, so every rank holds one contiguous range of the flattened
full parameter: `Span(start, numel)`. The blocks of the full parameter that the range touches are
this rank's; a block that straddles two ranks is held by both, each updating its own part, with
the same step count (both see the same decisions). Dense <-> compact conversions here let the
optimizer's state travel through torch.distributed.checkpoint as DTensors sharded like the
parameter (every rank writes its own part; DCP can reshard it).
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # a torch built without torch.distributed: nothing is ever sharded
    DTensor = None


def is_sharded(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


@dataclass(frozen=True)
class Span:
    start: int  # flat index, in the full parameter, of the local shard's first element
    numel: int  # elements in the local shard (0 on a rank that holds none)

    def blocks(self, block_size: int) -> tuple[int, int]:
        """[first, end) of the full parameter's blocks this shard touches."""
        if self.numel == 0:
            return 0, 0
        return self.start // block_size, (self.start + self.numel + block_size - 1) // block_size

    def head(self, block_size: int) -> int:
        """Elements of the first block that lie in this shard when that block starts on an earlier
        rank (0 when the shard starts at a block boundary)."""
        return min((-self.start) % block_size, self.numel)


def local_span(p: Tensor) -> Span:
    """The local shard's range in the flattened full parameter; a plain tensor is all of it."""
    if not is_sharded(p):
        return Span(0, p.numel())
    for placement in p.placements:
        if not (isinstance(placement, Replicate) or (isinstance(placement, Shard) and placement.dim == 0)):
            raise ValueError(f"a DTensor parameter placed {p.placements}: MaskedAdamW takes parameters sharded "
                             "along dim 0 (FSDP2's fully_shard) or replicated, where each rank's part is one "
                             "range of the flattened parameter")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    row = math.prod(p.shape[1:]) if p.dim() else 1
    return Span(offset[0] * row if p.dim() else 0, math.prod(shape))


def local(t):
    """A DTensor's local shard (a view, written in place), or the tensor itself (None stays None)."""
    return t.to_local() if is_sharded(t) else t


def local_flat(t: Tensor) -> Tensor:
    """The local shard of a DTensor (or the tensor itself), flattened: a view, written in place."""
    local = t.to_local() if is_sharded(t) else t
    return local.view(-1) if local.is_contiguous() else local.reshape(-1)


def _element_blocks(span: Span, block_size: int, device) -> tuple[Tensor, Tensor]:
    """(block, slot within the block) of every local element."""
    g = torch.arange(span.start, span.start + span.numel, device=device)
    return g // block_size, g % block_size


def locate(blocks: Tensor, wanted: Tensor) -> tuple[Tensor, Tensor]:
    """For each wanted block: its row in `blocks` (any order), and whether it is there."""
    if blocks.numel() == 0:
        return torch.zeros_like(wanted), torch.zeros_like(wanted, dtype=torch.bool)
    order = torch.argsort(blocks)
    pos = torch.searchsorted(blocks[order], wanted).clamp(max=blocks.numel() - 1)
    return order[pos], blocks[order][pos] == wanted


def to_dense(span: Span, block_size: int, sources, like: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Compact per-block state -> one value per local element. `sources`: (blocks, {key: rows of
    block_size values per block, flat}, steps per block, active?) for the active and the parked
    state. Returns ({key: local dense values}, element step (int32), element active (int8))."""
    device = like.device
    block, slot = _element_blocks(span, block_size, device)
    dense, step = {}, torch.zeros(span.numel, dtype=torch.int32, device=device)
    active = torch.zeros(span.numel, dtype=torch.int8, device=device)
    for blocks, rows, steps, is_active in sources:
        pos, found = locate(blocks.to(device), block)
        for key, values in rows.items():
            out = dense.setdefault(key, torch.zeros(span.numel, dtype=values.dtype, device=device))
            out[found] = values.to(device)[pos[found] * block_size + slot[found]]
        step[found] = steps.to(device)[pos[found]]
        active[found] = int(is_active)
    return dense, step, active


def to_compact(span: Span, block_size: int, dense: dict[str, Tensor], step: Tensor, active: Tensor):
    """One value per local element -> (active blocks, {key: rows}, steps) and the same for the
    parked blocks (inactive with a step count > 0); blocks sorted."""
    block, slot = _element_blocks(span, block_size, step.device)
    out = []
    for chosen in (active != 0, (active == 0) & (step > 0)):
        blocks = torch.unique(block[chosen])
        pos, found = locate(blocks, block)
        found &= chosen
        rows = {}
        for key, values in dense.items():
            r = torch.zeros(blocks.numel() * block_size, dtype=values.dtype, device=values.device)
            r[pos[found] * block_size + slot[found]] = values[found]
            rows[key] = r
        steps = torch.zeros(blocks.numel(), dtype=torch.int32, device=step.device)
        steps[pos[found]] = step[found].to(torch.int32)
        out.append((blocks, rows, steps))
    return out


def as_dtensor(local_flat_values: Tensor, param) -> Tensor:
    """A DTensor shaped and placed like `param` from this rank's flat local values."""
    local = local_flat_values.view(param.to_local().shape)
    return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())
