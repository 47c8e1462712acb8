"""A global top-k over score tensors sharded across ranks (ID3 under FSDP2), without gathering the
scores: each rank's own top-k candidates, one all-gather of (score, tensor, global index) rows,
and the same order on every rank as one process's `ops.masked_topk`: score descending (NaN
below every number, -0 == +0), ties to the lowest (tensor, index)."""
import torch
import torch.distributed as dist
from torch import Tensor

from winnow import ops


def rank_rows(rows: Tensor) -> Tensor:
    """The order of (score, tensor, index) rows under masked_topk's rule, one stable sort per key
    from the least significant; rows that repeat a (tensor, index) (replicas of a shard) dropped."""
    score, tensor, index = rows[:, 0], rows[:, 1], rows[:, 2]
    order = torch.argsort(index, stable=True)
    order = order[torch.argsort(tensor[order], stable=True)]
    nan = torch.isnan(score)
    order = order[torch.argsort(-torch.where(nan, 0, score)[order], stable=True)]
    order = order[torch.argsort(nan[order].to(torch.int8), stable=True)]
    ranked = rows[order]
    keep = torch.ones(len(order), dtype=torch.bool, device=rows.device)
    keep[1:] = (ranked[1:, 1] != ranked[:-1, 1]) | (ranked[1:, 2] != ranked[:-1, 2])
    return order[keep]


def candidate_rows(scores: list[Tensor], unmasked: list[Tensor], offsets: list[int], k: int) -> Tensor:
    """(k, 3) float64 rows (score, tensor, index in the whole) of this rank's own top-k still-masked
    entries; rows past them are padding (tensor -1)."""
    chosen = ops.masked_topk(scores, unmasked, min(k, sum(s.numel() for s in scores)))  # a shard may hold fewer
    device = scores[0].device
    rows = torch.full((k, 3), -1.0, dtype=torch.float64, device=device)
    at = 0
    for t, idx in enumerate(chosen):
        n = idx.numel()
        if n:
            idx = idx.to(device)
            rows[at:at + n, 0] = scores[t].reshape(-1)[idx].double()
            rows[at:at + n, 1] = t
            rows[at:at + n, 2] = (idx + offsets[t]).double()
            at += n
    return rows


def winners_of(rows: Tensor, sizes: list[int], offsets: list[int], k: int) -> tuple[list[Tensor], list[int]]:
    """From every rank's candidate rows: per tensor, the sorted local indices (of a part of
    `sizes[t]` entries starting at offsets[t]) among the global top-k, and how many of the k each
    tensor got in all."""
    rows = rows[rows[:, 1] >= 0]
    winners = rows[rank_rows(rows)[:k]]
    out = []
    for t, size in enumerate(sizes):
        mine = winners[winners[:, 1] == t, 2].to(torch.int64) - offsets[t]
        out.append(torch.sort(mine[(mine >= 0) & (mine < size)]).values)
    return out, torch.bincount(winners[:, 1].to(torch.int64), minlength=len(sizes)).tolist()


def sharded_topk(scores: list[Tensor], unmasked: list[Tensor], offsets: list[int], k: int,
                 group=None) -> tuple[list[Tensor], list[int]]:
    """(per tensor, the sorted local indices of its entries among the global top-k of every
    rank's still-masked entries; per tensor, how many of the k it got on all ranks). scores[t] is
    this rank's part of tensor t, whose entry i is entry offsets[t] + i of the whole; every rank
    calls this with the same k and tensor count. One all-gather of k rows per rank."""
    rows = candidate_rows(scores, unmasked, offsets, k)
    gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, rows, group=group)
    return winners_of(torch.cat(gathered), [s.numel() for s in scores], offsets, k)
