"""masked_topk: global top-k over the masked entries of many tensors, against a brute-force sort."""
import pytest
import torch

from winnow import ops, reference


def case(gen, sizes, levels, mask_p):
    scores = [torch.randint(0, levels, (n,), generator=gen).float() / 7 for n in sizes]  # many ties
    masks = [torch.rand(n, generator=gen) < mask_p for n in sizes]
    return scores, masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", [[1], [7, 1, 4097], [5000, 300, 20000, 2]])
@pytest.mark.parametrize("frac", [0.0, 0.001, 0.01, 0.5, 1.0])  # small-k heap path and radix path
def test_matches_brute_force(dtype, sizes, frac):
    gen = torch.Generator().manual_seed(len(sizes))
    scores, masks = case(gen, sizes, 30, 0.3)
    scores = [s.to(dtype) for s in scores]
    candidates = sum(int((~m).sum()) for m in masks)
    k = int(candidates * frac)
    got = ops.masked_topk(scores, masks, k)
    want = reference.masked_topk(scores, masks, k)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert sum(g.numel() for g in got) == k


@pytest.mark.parametrize("order", ["rising", "falling"])
@pytest.mark.parametrize("k", [1, 37, 300])
def test_small_k_on_scores_that_rise_or_fall_along_the_scan(order, k):
    """The small-k path's worst case: rising scores make every entry a candidate (its buffer is
    cut back to the best k over and over); ties and NaN mixed in, chunks spread over threads."""
    gen = torch.Generator().manual_seed(k)
    n = 200_003
    base = torch.arange(n, dtype=torch.float64) // 3  # runs of three equal scores
    scores = base if order == "rising" else base.flip(0)
    scores = scores.clone()
    scores[torch.randint(0, n, (50,), generator=gen)] = float("nan")
    parts = [p.float().contiguous() for p in scores.split([70_001, 3, 130_000 - 1])]
    masks = [torch.rand(p.numel(), generator=gen) < 0.2 for p in parts]
    got = ops.masked_topk(parts, masks, k)
    want = reference.masked_topk(parts, masks, k)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert sum(g.numel() for g in got) == k


def test_distinct_scores_without_masks_equal_torch_topk():
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn(n, generator=gen) for n in (1000, 1, 333)]
    got = ops.masked_topk(scores, None, 50)
    flat = torch.cat(scores)
    top = set(torch.topk(flat, 50).indices.tolist())
    offsets = [0, 1000, 1001]
    assert {o + int(i) for o, g in zip(offsets, got) for i in g} == top


def reference_topk_fast(scores, masks, k):
    """reference.masked_topk's rule with a stable sort (the brute force is slow past 10^5 entries)."""
    flat = torch.cat([s.double() for s in scores])
    candidates = (~torch.cat(masks)).nonzero().flatten()
    order = torch.sort(-flat[candidates], stable=True).indices[:k]  # no NaN here: by value, then position
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[candidates[order]] = True
    return [c.nonzero().flatten() for c in chosen.split([s.numel() for s in scores])]


NAN, INF = float("nan"), float("inf")
# (scores, unmasked, k, expected indices): the ranking rule of csrc/include/winnow/order_key.h
# (-0 == +0, NaN below -inf), ties to the lowest index, all candidates when fewer than k.
SPECIAL_CASES = [
    ([-1.0, -INF, 0.0, -0.0, 2.0, INF, NAN], None, 3, [2, 4, 5]),   # inf, 2, then the first zero
    ([-1.0, -INF, 0.0, -0.0, 2.0, INF, NAN], None, 6, [0, 1, 2, 3, 4, 5]),  # -inf is returned, NaN last
    ([-1.0, -INF, 0.0, -0.0, 2.0, INF, NAN], None, 7, [0, 1, 2, 3, 4, 5, 6]),
    ([NAN, -INF], None, 1, [1]),
    ([-0.0, 0.0], None, 1, [0]),                                     # -0 == +0: the lower index
    ([0.0, -0.0], None, 1, [0]),
    ([NAN, NAN, 1.0, 5.0], [False, False, False, True], 4, [0, 1, 2]),  # 3 candidates for k = 4
    ([-INF, -INF, NAN], [False, True, False], 2, [0, 2]),
]


@pytest.mark.parametrize("path", ["masked_topk", "_masked_topk_aten"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("values, unmasked, k, expected", SPECIAL_CASES)
def test_special_values_follow_the_ranking_rule(device, path, dtype, values, unmasked, k, expected):
    scores = [torch.tensor(values, dtype=dtype)]
    masks = None if unmasked is None else [torch.tensor(unmasked)]
    assert reference.masked_topk(scores, masks, k)[0].tolist() == expected
    op = getattr(torch.ops.winnow, path)
    got = op([s.to(device) for s in scores], [] if masks is None else [m.to(device) for m in masks], k)
    assert got[0].cpu().tolist() == expected


def test_ties_across_tensors_go_to_the_lowest_tensor(device):
    scores = [torch.tensor([1.0, -0.0], device=device), torch.tensor([0.0, 0.0, 3.0], device=device)]
    got = ops.masked_topk(scores, None, 3)
    assert [g.cpu().tolist() for g in got] == [[0, 1], [2]]


def test_bad_input():
    s = [torch.rand(5), torch.rand(3)]
    with pytest.raises(ValueError, match=r"k must be in \[0, 8\]"):
        ops.masked_topk(s, None, 9)
    with pytest.raises(TypeError, match=r"scores\[1\] has dtype Double"):
        ops.masked_topk([s[0], s[1].double()], None, 1)
    with pytest.raises(TypeError, match="scores must be float32 or float64"):
        ops.masked_topk([torch.arange(3)], None, 1)
    with pytest.raises(ValueError, match=r"unmasked\[1\] has shape"):
        ops.masked_topk(s, [torch.zeros(5, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)], 1)
    with pytest.raises(ValueError, match="scores is an empty list"):
        ops.masked_topk([], None, 0)


@pytest.mark.parametrize("op", ["masked_topk", "_masked_topk_aten"])
def test_opcheck(device, op):
    gen = torch.Generator().manual_seed(0)
    s = [torch.rand(50, generator=gen).to(device), torch.rand(30, generator=gen).to(device)]
    m = [(torch.rand(50, generator=gen) < 0.3).to(device), (torch.rand(30, generator=gen) < 0.3).to(device)]
    torch.library.opcheck(getattr(torch.ops.winnow, op).default, (s, m, 5))


@pytest.mark.parametrize("frac", [0.0001, 0.3, 1.0])
def test_more_tensors_than_one_launch_holds(device, frac):
    """60 tensors (a CUDA launch holds 48), some past one 65536-element chunk, misaligned views."""
    gen = torch.Generator().manual_seed(4)
    sizes = [1, 33, 70001, 4097] * 15
    bases = [torch.randint(0, 50, (n + 1,), generator=gen).float() / 3 for n in sizes]  # many ties
    masks = [torch.rand(n, generator=gen) < 0.3 for n in sizes]
    k = int(sum(int((~m).sum()) for m in masks) * frac)
    got = ops.masked_topk([b.to(device)[1:] for b in bases], [m.to(device) for m in masks], k)
    for g, w in zip(got, reference_topk_fast([b[1:] for b in bases], masks, k)):
        assert torch.equal(g.cpu(), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("frac", [0.0, 0.01, 0.5, 1.0])
def test_aten_composed_path_matches_brute_force(device, dtype, frac):
    """The ATen-composed implementation (the CUDA path) checked on every device, CPU included."""
    gen = torch.Generator().manual_seed(3)
    scores, masks = case(gen, [700, 1, 3000, 45], 25, 0.4)
    scores = [s.to(dtype).to(device) for s in scores]
    masks = [m.to(device) for m in masks]
    k = int(sum(int((~m).sum()) for m in masks) * frac)
    got = torch.ops.winnow._masked_topk_aten(scores, masks, k)
    want = reference.masked_topk([s.cpu() for s in scores], [m.cpu() for m in masks], k)
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w)


# ---- id3_topk: ID3's selection, H computed inside it (one fused pass on the CPU) ----

def id3_case(gen, sizes, dtype, mask_p):
    params = [(torch.randint(-20, 20, (n,), generator=gen).double() / 8).to(dtype) for n in sizes]  # ties
    grads = [(torch.randint(-20, 20, (n,), generator=gen).double() / 4).to(dtype) for n in sizes]
    if sizes[-1] > 3:
        grads[-1][0], grads[-1][1], params[-1][2] = float("inf"), float("nan"), float("nan")
    masks = [torch.rand(n, generator=gen) < mask_p for n in sizes]
    return params, grads, masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sizes", [[1], [7, 1, 4097], [5000, 300, 70001, 2]])
@pytest.mark.parametrize("frac", [0.0, 0.001, 0.01, 0.5, 1.0])  # small-k and large-k paths
@pytest.mark.parametrize("exponent", [0.0, 1.0, 0.5])
def test_id3_topk_matches_its_reference_and_the_two_op_path(device, dtype, sizes, frac, exponent):
    gen = torch.Generator().manual_seed(len(sizes))
    params, grads, masks = id3_case(gen, sizes, dtype, 0.3)
    candidates = sum(int((~m).sum()) for m in masks)
    k = int(candidates * frac)
    on = [[t.to(device) for t in lst] for lst in (params, grads, masks)]
    got = ops.id3_topk(*on, k, eps=1e-3, exponent=exponent)
    assert sum(g.numel() for g in got) == k
    # the composition ID3 runs where there is no fused kernel: update into zeroed scores, select
    scores = [torch.zeros(n, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
              for n in sizes]
    ops.importance_update_id3(on[0], on[1], scores, on[2], eps=1e-3, exponent=exponent, beta=0.0,
                              nonfinite=torch.zeros(len(sizes), dtype=torch.int64, device=device))
    two_op = ops.masked_topk(scores, on[2], k)
    for g, w in zip(got, two_op):
        assert torch.equal(g.cpu(), w.cpu())
    if exponent != 0.5:  # a general power rounds like the C library's, not bit for bit like torch.pow
        want = reference.id3_topk(params, grads, masks, k, eps=1e-3, exponent=exponent)
        for g, w in zip(got, want):
            assert torch.equal(g.cpu(), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exponent", [0.0, 1.0])
def test_id3_topk_finds_scores_one_ulp_above_the_cut_late_in_the_scan(dtype, exponent):
    """The small-k scan skips a tile whose every H is provably at most the k-th best so far (a
    multiply-and-compare test with a margin): entries one ulp above that cut, placed after many
    tiles of entries at the cut, must still win, and equal ones must not displace earlier ones."""
    n, k = 64 * 1024, 40
    p = torch.full((n,), 0.75, dtype=dtype)
    h = torch.full((n,), 1.0, dtype=dtype)                       # the cut, from the first tiles on
    late = torch.arange(n - 1000, n, 25)[:k // 2]                  # a few in late tiles: 1 ulp above
    h[late] = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(2.0, dtype=dtype))
    eps = 1e-3
    g = h * (p.abs() + eps) if exponent == 1.0 else h.clone()
    want = reference.id3_topk([p], [g], None, k, eps=eps, exponent=exponent)[0]
    got = ops.id3_topk([p], [g], None, k, eps=eps, exponent=exponent)[0]
    assert torch.equal(got, want)
    h_of = (g.abs() / (p.abs() + eps)) if exponent == 1.0 else g.abs()
    assert (h_of[late] > h_of[0]).all() and set(late.tolist()) <= set(got.tolist())  # the case is what it claims


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("exponent", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("sizes, frac", [([7, 4097, 70001], 0.001), ([70001, 5], 0.01), ([300], 0.2)])
def test_a_floor_on_h_changes_nothing_but_the_work(dtype, exponent, sizes, frac):
    """_masked_topk_id3_from leaves out H below `at_least` from the start (ID3 passes the last
    step's k-th best): the selection equals the floorless one whether the floor is below the k-th
    best H, at it (ties at the floor included), or above it (the scan runs again), and it
    returns the k-th best H."""
    gen = torch.Generator().manual_seed(7)
    params, grads, masks = id3_case(gen, sizes, dtype, 0.3)
    k = max(1, int(sum(int((~m).sum()) for m in masks) * frac))
    want = torch.ops.winnow._masked_topk_id3(params, grads, masks, k, 1e-3, exponent)
    _, kth = torch.ops.winnow._masked_topk_id3_from(params, grads, masks, k, 1e-3, exponent, 0.0)
    kth = float(kth)
    h = torch.cat([(g.double().abs() / (p.double().abs() + 1e-3) ** exponent).nan_to_num(0, 0, 0)[~m]
                   for p, g, m in zip(params, grads, masks)])
    if 64 * k <= h.numel():  # the small-k path reports it (the large-k path returns 0)
        assert kth == pytest.approx(float(h.sort(descending=True).values[k - 1]), rel=1e-2)
    for at_least in (0.0, kth / 4, kth, torch.nextafter(torch.tensor(kth), torch.tensor(0.0)).item(), kth * 4, 1e30):
        got, again = torch.ops.winnow._masked_topk_id3_from(params, grads, masks, k, 1e-3, exponent, at_least)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), at_least
        assert float(again) == kth
    with pytest.raises(ValueError, match="at_least must be finite"):
        torch.ops.winnow._masked_topk_id3_from(params, grads, masks, k, 1e-3, exponent, float("nan"))


def test_a_floor_off_the_cpu_is_ignored():
    """_masked_topk_id3_from's ATen composition (devices without the fused scan, reached here by
    redispatching past the CPU kernel): the same selection, the floor ignored, no k-th best."""
    gen = torch.Generator().manual_seed(5)
    params, grads, masks = id3_case(gen, [7, 4097, 70001], torch.float32, 0.3)
    op = torch.ops.winnow._masked_topk_id3_from.default
    composite = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    fused, kth = op(params, grads, masks, 50, 1e-3, 1.0, 0.0)
    composed, none = op.redispatch(composite, params, grads, masks, 50, 1e-3, 1.0, 2 * float(kth))
    assert all(torch.equal(a, b) for a, b in zip(fused, composed)) and float(kth) > 0 and float(none) == 0.0


def test_id3_topk_from_opcheck():
    gen = torch.Generator().manual_seed(0)
    p = [torch.randn(500, generator=gen), torch.randn(3, 10, generator=gen)]
    g = [torch.randn(500, generator=gen), torch.randn(3, 10, generator=gen)]
    m = [torch.rand(500, generator=gen) < 0.5, torch.rand(3, 10, generator=gen) < 0.5]
    torch.library.opcheck(torch.ops.winnow._masked_topk_id3_from.default, (p, g, m, 3, 1e-8, 1.0, 0.5))


def test_id3_topk_without_masks_and_a_non_finite_h_counts_as_zero():
    p = [torch.tensor([1.0, 1.0, 1.0, 1.0])]
    g = [torch.tensor([float("inf"), 0.0, float("nan"), -2.0])]
    # H = [inf -> 0, 0, nan -> 0, 2]: 2 first, then the three zeros by index
    assert ops.id3_topk(p, g, None, 3, eps=0.0)[0].tolist() == [0, 1, 3]


def test_id3_topk_bad_input_names_the_argument():
    p, g = [torch.rand(5), torch.rand(3)], [torch.rand(5), torch.rand(3)]
    with pytest.raises(ValueError, match=r"k must be in \[0, 8\]"):
        ops.id3_topk(p, g, None, 9)
    with pytest.raises(ValueError, match=r"grads\[1\] has shape"):
        ops.id3_topk(p, [g[0], torch.rand(4)], None, 1)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype"):
        ops.id3_topk(p, [g[0].double(), g[1]], None, 1)
    with pytest.raises(TypeError, match=r"params\[1\] is Double"):
        ops.id3_topk([p[0], p[1].double()], [g[0], g[1].double()], None, 1)
    with pytest.raises(ValueError, match=r"unmasked\[1\] has shape"):
        ops.id3_topk(p, g, [torch.zeros(5, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)], 1)
    with pytest.raises(ValueError, match="eps must be finite"):
        ops.id3_topk(p, g, None, 1, eps=float("nan"))
    with pytest.raises(ValueError, match="params is an empty list"):
        ops.id3_topk([], [], None, 0)


def test_id3_topk_opcheck():
    gen = torch.Generator().manual_seed(0)
    p = [torch.randn(50, generator=gen), torch.randn(3, 10, generator=gen)]
    g = [torch.randn(50, generator=gen), torch.randn(3, 10, generator=gen)]
    m = [torch.rand(50, generator=gen) < 0.5, torch.rand(3, 10, generator=gen) < 0.5]
    torch.library.opcheck(torch.ops.winnow._masked_topk_id3.default, (p, g, m, 7, 1e-8, 1.0))


@pytest.mark.parametrize("exponent", [0.0, 1.0])
@pytest.mark.parametrize("frac", [0.001, 0.5])
def test_id3_topk_aten_composition_matches_the_fused_kernel(exponent, frac):
    """_masked_topk_id3's ATen composition (what serves devices without a kernel of their own),
    reached on the CPU by redispatching past the CPU kernel."""
    gen = torch.Generator().manual_seed(3)
    params, grads, masks = id3_case(gen, [7, 4097, 70001], torch.float32, 0.3)
    k = int(sum(int((~m).sum()) for m in masks) * frac)
    op = torch.ops.winnow._masked_topk_id3.default
    composite = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    fused = op(params, grads, masks, k, 1e-3, exponent)
    composed = op.redispatch(composite, params, grads, masks, k, 1e-3, exponent)
    for a, b in zip(fused, composed):
        assert torch.equal(a, b)
