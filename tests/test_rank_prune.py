"""rank_prune (AdaLoRA's budget step over all modules) against winnow.reference and its tie rule."""
import pytest
import torch

from winnow import ops, reference

NAN = float("nan")


def module_stats(shapes, make):
    """lora_E and the six statistics lists of modules with (rank, in, out) shapes."""
    e = [make(r, 1) for r, _, _ in shapes]
    return e, [[make(r, 1) for r, _, _ in shapes], [make(r, 1) for r, _, _ in shapes],
               [make(r, i) for r, i, _ in shapes], [make(r, i) for r, i, _ in shapes],
               [make(o, r) for r, _, o in shapes], [make(o, r) for r, _, o in shapes]]


def test_k_zero_masks_nothing_and_rank_zero_modules():
    e = [torch.randn(3, 1), torch.randn(0, 1)]
    stats = lambda shapes: [torch.rand(s) for s in shapes]  # noqa: E731
    ie, ue = stats([(3, 1), (0, 1)]), stats([(3, 1), (0, 1)])
    ia, ua = stats([(3, 5), (0, 5)]), stats([(3, 5), (0, 5)])
    ib, ub = stats([(4, 3), (4, 0)]), stats([(4, 3), (4, 0)])
    before = [t.clone() for t in e]
    scores, keep = ops.rank_prune(e, ie, ue, ia, ua, ib, ub, 0)
    assert keep.all() and all(torch.equal(x, y) for x, y in zip(e, before)) and scores.shape == (3,)
    scores, keep = ops.rank_prune(e, ie, ue, ia, ua, ib, ub, 3)
    assert not keep.any() and torch.count_nonzero(e[0]) == 0


def test_ties_mask_every_triplet_at_the_threshold():
    e = [torch.ones(4, 1)]
    ones = lambda *s: [torch.ones(*s)]  # noqa: E731
    _, keep = ops.rank_prune(e, ones(4, 1), ones(4, 1), ones(4, 2), ones(4, 2), ones(3, 4), ones(3, 4), 1)
    assert not keep.any()  # all four tie with the 1st smallest: peft masks S <= threshold


@pytest.mark.parametrize("n_masked", [0, 1, 7, 30])
def test_rank_prune_matches_reference(device, n_masked):
    gen = torch.Generator().manual_seed(n_masked)
    shapes = [(12, 33, 17), (1, 7, 4097), (17, 64, 5)]
    def rnd(*s):
        return torch.rand(*s, generator=gen).to(device)
    e = [rnd(r, 1) for r, _, _ in shapes]
    stats = [[rnd(r, 1) for r, _, _ in shapes], [rnd(r, 1) for r, _, _ in shapes],
             [rnd(r, i) for r, i, _ in shapes], [rnd(r, i) for r, i, _ in shapes],
             [rnd(o, r) for r, _, o in shapes], [rnd(o, r) for r, _, o in shapes]]
    e_ref = [t.clone() for t in e]
    s, k = ops.rank_prune(e, *stats, n_masked)
    s_ref, k_ref = reference.rank_prune(e_ref, *stats, n_masked)
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=1e-12)
    assert torch.equal(k, k_ref) and int((~k).sum()) == n_masked
    for x, y in zip(e, e_ref):
        assert torch.equal(x, y)


def test_rank_prune_opcheck(device):
    shapes = [(3, 5, 4), (2, 6, 7)]
    e = [torch.randn(r, 1, device=device) for r, _, _ in shapes]
    mk = lambda fn: [torch.rand(*fn(r, i, o), device=device) for r, i, o in shapes]  # noqa: E731
    args = (e, mk(lambda r, i, o: (r, 1)), mk(lambda r, i, o: (r, 1)), mk(lambda r, i, o: (r, i)),
            mk(lambda r, i, o: (r, i)), mk(lambda r, i, o: (o, r)), mk(lambda r, i, o: (o, r)), 2)
    torch.library.opcheck(torch.ops.winnow.rank_prune.default, args)


def test_rank_prune_bad_input():
    e = [torch.randn(3, 1)]
    good = dict(ie=[torch.rand(3, 1)], ue=[torch.rand(3, 1)], ia=[torch.rand(3, 5)], ua=[torch.rand(3, 5)],
                ib=[torch.rand(4, 3)], ub=[torch.rand(4, 3)])
    with pytest.raises(ValueError, match=r"num_masked must be in \[0, 3\]"):
        ops.rank_prune(e, *good.values(), 4)
    bad = dict(good, ub=[torch.rand(4, 2)])
    with pytest.raises(ValueError, match=r"unc_B\[0\] must have shape \[4, 3\]"):
        ops.rank_prune(e, *bad.values(), 1)
    bad = dict(good, ia=[torch.rand(3, 5, dtype=torch.float64)])
    with pytest.raises(TypeError, match=r"ipt_A\[0\] must be Float"):
        ops.rank_prune(e, *bad.values(), 1)
    with pytest.raises(ValueError, match=r"lora_E\[0\] must be a contiguous \[r, 1\] tensor"):
        ops.rank_prune([torch.randn(3)], *good.values(), 1)


@pytest.mark.parametrize("num_masked, kept", [(1, [0, 0, 0, 1, 1]), (3, [0, 0, 0, 1, 1]), (4, [0, 0, 0, 0, 1]),
                                              (5, [0, 0, 0, 0, 0])])
def test_nan_scores_of_a_zero_width_module_rank_lowest(device, num_masked, kept):
    """A module with in_features 0 has NaN triplet scores (an empty mean): they rank below every
    number, so they are masked first, and all of them tie at the threshold."""
    shapes = [(3, 0, 5), (2, 4, 6)]
    e, stats = module_stats(shapes, lambda *s: torch.ones(*s, device=device))
    stats[0][1] = torch.tensor([[2.0], [3.0]], device=device)  # ipt_E: the second module's scores are 4, 5
    _, keep = ops.rank_prune(e, *stats, num_masked)
    ref_e = [t.clone() for t in e]
    scores, ref_keep = reference.rank_prune(ref_e, *[[t.cpu() for t in lst] for lst in stats], num_masked)
    assert scores[:3].isnan().all()
    assert keep.cpu().int().tolist() == kept == ref_keep.int().tolist()


def test_negative_and_positive_zero_tie(device):
    """-0 == +0: with the threshold at a zero, both zeros are masked (ties included, as in peft)."""
    shapes = [(3, 2, 2)]
    e, stats = module_stats(shapes, lambda *s: torch.zeros(*s, device=device))
    stats[0][0] = torch.tensor([[-0.0], [1.0], [0.0]], device=device)  # ipt_E; unc_E is 0 -> E scores -0, 0, 0
    stats[1][0] = torch.tensor([[1.0], [1.0], [1.0]], device=device)
    scores, keep = ops.rank_prune(e, *stats, 1)
    assert keep.cpu().tolist() == [False, True, False]
    assert torch.equal(keep.cpu(), reference.rank_prune([t.cpu() for t in e], *[[t.cpu() for t in lst] for lst in stats], 1)[1])


def test_more_modules_than_one_launch_holds(device):
    """50 modules (a CUDA launch of means holds 40), odd shapes, lora_E of every float dtype."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(1 + i % 12, 1 + (7 * i) % 97, 1 + (5 * i) % 61) for i in range(50)]
    e, stats = module_stats(shapes, lambda *s: torch.rand(*s, generator=gen).to(device))
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    e = [t.to(dtypes[i % 4]) for i, t in enumerate(e)]
    e_ref = [t.clone() for t in e]
    total = sum(r for r, _, _ in shapes)
    scores, keep = ops.rank_prune(e, *stats, total // 3)
    ref_scores, ref_keep = reference.rank_prune(e_ref, *stats, total // 3)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-6, atol=1e-12)
    assert torch.equal(keep, ref_keep) and int((~keep).sum()) == total // 3
    for a, b in zip(e, e_ref):
        assert torch.equal(a, b)
