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


def sharded_topk(scores: list[Tensor], unmasked: list[Tensor], offsets: list[int], k: int,
                 group=None) -> tuple[list[Tensor], list[int]]:
    """(per tensor, the sorted local indices of its entries among the global top-k of every
    rank's still-masked entries; per tensor, how many of the k it got on all ranks). scores[t] is
    this rank's part of tensor t, whose entry i is entry offsets[t] + i of the whole; every rank
    calls this with the same k and tensor count."""
    chosen = ops.masked_topk(scores, unmasked, k)
    device = scores[0].device
    rows = torch.full((k, 3), -1.0, dtype=torch.float64, device=device)  # tensor -1: padding
    at = 0
    for t, idx in enumerate(chosen):
        n = idx.numel()
        if n:
            idx = idx.to(device)
            rows[at:at + n, 0] = scores[t].reshape(-1)[idx].double()
            rows[at:at + n, 1] = t
            rows[at:at + n, 2] = (idx + offsets[t]).double()
            at += n
    gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, rows, group=group)
    merged = torch.cat(gathered)
    merged = merged[merged[:, 1] >= 0]
    winners = merged[rank_rows(merged)[:k]]
    out = []
    for t, s in enumerate(scores):
        mine = winners[winners[:, 1] == t, 2].to(torch.int64) - offsets[t]
        out.append(torch.sort(mine[(mine >= 0) & (mine < s.numel())]).values)
    return out, torch.bincount(winners[:, 1].to(torch.int64), minlength=len(scores)).tolist()
