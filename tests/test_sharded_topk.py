"""winnow.sharded_topk: every rank's candidates merged give one process's masked_topk, whatever
the split of the tensors into shards (ties, NaN, -0, already-unmasked entries, replicas)."""
import pytest
import torch

from winnow import ops
from winnow.sharded_topk import candidate_rows, winners_of


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """FSDP2's dim-0 chunks of n entries: ceil(n / parts) each, the last ones shorter or empty."""
    size = -(-n // parts)
    return [(min(r * size, n), min((r + 1) * size, n)) for r in range(parts)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("world", [2, 3])
def test_merged_candidates_are_one_process_top_k(seed, world):
    gen = torch.Generator().manual_seed(seed)
    sizes = [1, 7, 64, 13]
    scores = [torch.randint(0, 4, (n,), generator=gen).to(torch.float32) for n in sizes]  # many ties
    scores[2][3], scores[2][5], scores[3][0] = float("nan"), -0.0, float("inf")
    unmasked = [torch.rand(n, generator=gen) < 0.3 for n in sizes]
    for k in (1, 5, 40, 85):  # 85: every entry
        want = ops.masked_topk(scores, unmasked, k)
        ranks = [[_split(n, world)[r] for n in sizes] for r in range(world)]
        rows = torch.cat([candidate_rows([s[a:b] for s, (a, b) in zip(scores, spans)],
                                         [u[a:b] for u, (a, b) in zip(unmasked, spans)],
                                         [a for a, _ in spans], k) for spans in ranks])
        replica = rows[: rows.shape[0] // world]  # rank 0 again, as a replica of its shard (HSDP)
        merged = torch.cat([rows, replica])
        got = [[] for _ in sizes]
        for spans in ranks:
            mine, counts = winners_of(merged, [b - a for a, b in spans], [a for a, _ in spans], k)
            for t, ((a, _), idx) in enumerate(zip(spans, mine)):
                got[t].append(idx + a)
            assert counts == [w.numel() for w in want]
        for t in range(len(sizes)):
            assert torch.equal(torch.cat(got[t]), want[t]), (k, t)
