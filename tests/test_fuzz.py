"""Hypothesis fuzzing of every op's Python entry (winnow.ops), on every device: random shapes
(empty, 1, odd), dtypes (half, bfloat16, float, double, and integers that must be refused),
layouts (transposed and sliced views, and contiguous views one element into their storage, which
CUDA's 16-byte vector loads must not assume aligned) and NaN / inf. Each call must either equal
the reference (winnow.reference, on CPU copies; NaN where it has NaN) or raise a clear
ValueError / TypeError - never crash or hang."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from winnow import ops, reference

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TOL = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-5, torch.float64: 1e-10}
# function_scoped_fixture: `device` is a constant per test, so sharing it across examples is safe.
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

shapes = st.lists(st.sampled_from([0, 1, 2, 3, 7, 9]), min_size=1, max_size=3).map(tuple) | st.just((4097,))


@st.composite
def tensors(draw, shape=None, dtype=None, nonfinite=True, positive=False, device="cpu"):
    """A tensor of `shape` and `dtype` on `device`, maybe a non-contiguous or misaligned view,
    maybe with NaN / inf."""
    shape = draw(shapes) if shape is None else shape
    dtype = draw(st.sampled_from(FLOATS)) if dtype is None else dtype
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced", "offset"]))
    if layout == "transposed" and len(shape) >= 2:
        base = torch.randn(shape[::-1], generator=g, dtype=torch.float64)
    elif layout == "sliced":
        base = torch.randn((*shape[:-1], 2 * shape[-1]), generator=g, dtype=torch.float64)
    elif layout == "offset":
        base = torch.randn(math.prod(shape) + 1, generator=g, dtype=torch.float64)
    else:
        base = torch.randn(shape, generator=g, dtype=torch.float64)
    if positive:
        base = base.abs()
    if nonfinite and base.numel() > int(layout == "offset") and draw(st.booleans()):
        idx = draw(st.integers(int(layout == "offset"), base.numel() - 1))
        base.view(-1)[idx] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    base = base.to(dtype).to(device)
    if layout == "transposed" and len(shape) >= 2:
        return base.transpose(0, -1)
    if layout == "sliced":
        return base[..., ::2]
    if layout == "offset":
        return base[1:].view(shape)
    return base


def cpu(tensors):
    return [t.cpu() for t in tensors]


def draw_params_and_grads(data, device, finite_params=False):
    """(dtype, its fp32/fp64 state dtype, 1-3 params, same-shaped grads) for the multi-tensor ops."""
    n = data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from(FLOATS))
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    params = [data.draw(tensors(dtype=dtype, nonfinite=not finite_params, device=device)) for _ in range(n)]
    if finite_params:  # parameters updated in place: contiguous (an offset view stays as it is)
        params = [p.contiguous() for p in params]
    grads = [data.draw(tensors(shape=p.shape, dtype=dtype, device=device)) for p in params]
    return dtype, stat, params, grads


def close(got, want, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=tol, atol=tol, equal_nan=True)


@FUZZ
@given(st.data(), st.sampled_from(list(ops.ACT_KINDS)))
def test_act_tangent(device, data, kind):
    z = data.draw(tensors(device=device))
    dz = data.draw(tensors(shape=z.shape, dtype=z.dtype, device=device))
    y, dy = ops.act_tangent(z, dz, kind)
    ry, rdy = reference.act_tangent(z.cpu(), dz.cpu(), kind)
    # Exact agreement (NaN included) wherever the inputs are finite. At z = +-inf torch's own
    # GELU gives NaN where the limit exists (gelu(inf) = inf, slope 1); winnow gives the limit,
    # so there only the reference's finite values are compared.
    finite_in = (torch.isfinite(z) & torch.isfinite(dz)).cpu()
    for ours, ref in ((y, ry), (dy, rdy)):
        keep = finite_in | torch.isfinite(ref)
        close(ours.cpu()[keep], ref[keep], z.dtype)


@FUZZ
@given(st.data())
def test_act_tangent_refuses_mismatches(device, data):
    z = data.draw(tensors(nonfinite=False, device=device))
    other = data.draw(st.sampled_from(["dtype", "shape", "int"]))
    if other == "dtype":
        dz = z.to(torch.float64 if z.dtype != torch.float64 else torch.float32)
    elif other == "shape":
        dz = torch.zeros((*z.shape, 2), dtype=z.dtype, device=device)
    else:
        z, dz = z.to(torch.int64), z.to(torch.int64)
    with pytest.raises((ValueError, TypeError), match="dz|z must be"):
        ops.act_tangent(z, dz, "relu")


@FUZZ
@given(st.data())
def test_softmax_tangent(device, data):
    s = data.draw(tensors(nonfinite=False, device=device))
    p = torch.softmax(s.double(), -1).to(s.dtype)
    ds = data.draw(tensors(shape=s.shape, dtype=s.dtype, device=device))
    close(ops.softmax_tangent(p, ds), reference.softmax_tangent(p.cpu(), ds.cpu()), s.dtype)


@FUZZ
@given(st.data())
def test_oba_score_accumulate(device, data):
    n = data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from(FLOATS))
    thetas = [data.draw(tensors(dtype=dtype, device=device)) for _ in range(n)]
    hs = [data.draw(tensors(shape=t.shape, dtype=dtype, device=device)) for t in thetas]
    ours = [data.draw(tensors(shape=t.shape, dtype=torch.float64, nonfinite=False, device=device)).contiguous()
            for t in thetas]
    ref = cpu(ours)
    ops.oba_score_accumulate(thetas, hs, ours)
    reference.oba_score_accumulate(cpu(thetas), cpu(hs), ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12, equal_nan=True)


@FUZZ
@given(st.data())
def test_oba_channel_sums(device, data):
    dtype = data.draw(st.sampled_from([*FLOATS, torch.int64]))
    groups = data.draw(st.sampled_from([1, 2, 3]))
    s = data.draw(tensors(dtype=torch.float64, device=device))
    if dtype != torch.float64:
        with pytest.raises(TypeError, match="float64"):
            ops.oba_channel_sums(s.to(dtype), groups)
        return
    if s.dim() < 2 or s.shape[0] % groups:
        with pytest.raises(ValueError, match="2 dims|divisible"):
            ops.oba_channel_sums(s, groups)
        return
    for got, want in zip(ops.oba_channel_sums(s, groups), reference.oba_channel_sums(s.cpu(), groups)):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-10, equal_nan=True)


@FUZZ
@given(st.data())
def test_importance_update_adalora(device, data):
    dtype, stat, params, grads = draw_params_and_grads(data, device)
    n = len(params)
    ipt = [data.draw(tensors(shape=p.shape, dtype=stat, nonfinite=False, positive=True, device=device)).contiguous()
           for p in params]
    unc = [data.draw(tensors(shape=p.shape, dtype=stat, nonfinite=False, positive=True, device=device)).contiguous()
           for p in params]
    ri, ru = cpu(ipt), cpu(unc)
    nf, rnf = torch.zeros(n, dtype=torch.int64, device=device), torch.zeros(n, dtype=torch.int64)
    ops.importance_update_adalora(params, grads, ipt, unc, 0.85, 0.9, nf)
    reference.importance_update_adalora(cpu(params), cpu(grads), ri, ru, 0.85, 0.9, rnf)
    for a, b in zip(ipt + unc, ri + ru):
        close(a, b, stat)
    assert torch.equal(nf.cpu(), rnf)


@FUZZ
@given(st.data(), st.booleans())
def test_importance_update_id3(device, data, with_mask):
    dtype, stat, params, grads = draw_params_and_grads(data, device)
    n = len(params)
    scores = [data.draw(tensors(shape=p.shape, dtype=stat, nonfinite=False, positive=True, device=device)).contiguous()
              for p in params]
    masks = [(torch.rand(p.shape) < 0.3).to(device) for p in params] if with_mask else None
    ref = cpu(scores)
    nf, rnf = torch.zeros(n, dtype=torch.int64, device=device), torch.zeros(n, dtype=torch.int64)
    ops.importance_update_id3(params, grads, scores, masks, eps=1e-6, exponent=1.0, beta=0.5, nonfinite=nf)
    reference.importance_update_id3(cpu(params), cpu(grads), ref, masks and cpu(masks), eps=1e-6, exponent=1.0,
                                    beta=0.5, nonfinite=rnf)
    for a, b in zip(scores, ref):
        close(a, b, stat)
    assert torch.equal(nf.cpu(), rnf)


@FUZZ
@given(st.data())
def test_masked_topk(device, data):
    n = data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    scores = [data.draw(tensors(dtype=dtype, device=device)) for _ in range(n)]
    masks = [(torch.rand(s.shape) < 0.3).to(device) for s in scores] if data.draw(st.booleans()) else None
    k = data.draw(st.integers(-1, 12))
    if dtype == torch.float16:
        with pytest.raises(TypeError, match="float32 or float64"):
            ops.masked_topk(scores, masks, max(k, 0))
        return
    if k < 0:
        with pytest.raises(ValueError, match="k"):
            ops.masked_topk(scores, masks, k)
        return
    if k > sum(s.numel() for s in scores):  # its contract: k at most the number of entries
        with pytest.raises(ValueError, match="k must be in"):
            ops.masked_topk([s.contiguous() for s in scores], masks, k)
        return
    if not all(s.is_contiguous() for s in scores):  # its contract: contiguous scores (no hidden copy)
        with pytest.raises(ValueError, match=r"scores\[\d\] must be contiguous"):
            ops.masked_topk(scores, masks, k)
        scores = [s.contiguous() for s in scores]
    want = reference.masked_topk(cpu(scores), masks and cpu(masks), k)
    for path in (torch.ops.winnow.masked_topk, torch.ops.winnow._masked_topk_aten):
        got = path(scores, masks or [], k)
        for a, b in zip(got, want):
            assert torch.equal(a.cpu(), b), (path, a, b)


@FUZZ
@given(st.data(), st.booleans(), st.sampled_from([0.0, 1.0]))
def test_id3_topk(device, data, with_mask, exponent):
    dtype, _, params, grads = draw_params_and_grads(data, device)
    masks = [(torch.rand(p.shape) < 0.3).to(device) for p in params] if with_mask else None
    k = data.draw(st.integers(-1, 12))
    total = sum(p.numel() for p in params)
    if k < 0 or k > total:
        with pytest.raises(ValueError, match="k must be in"):
            ops.id3_topk([p.contiguous() for p in params], grads, masks, k, exponent=exponent)
        return
    if torch.device(device).type == "cpu" and not all(p.is_contiguous() for p in params):  # contiguous params (CPU)
        with pytest.raises(ValueError, match=r"params\[\d\] must be contiguous"):
            ops.id3_topk(params, grads, masks, k, exponent=exponent)
        params = [p.contiguous() for p in params]
    got = ops.id3_topk(params, grads, masks, k, eps=1e-6, exponent=exponent)
    want = reference.id3_topk(cpu(params), cpu(grads), masks and cpu(masks), k, eps=1e-6, exponent=exponent)
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b), (a, b)


@FUZZ
@given(st.data())
def test_importance_score(device, data):
    n = data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    ipt = [data.draw(tensors(shape=data.draw(st.tuples(st.integers(0, 9), st.integers(0, 9))), dtype=dtype,
                             nonfinite=False, positive=True, device=device)).contiguous() for _ in range(n)]
    unc = [torch.rand(t.shape, dtype=dtype, device=device) for t in ipt]
    dims = [data.draw(st.sampled_from([None, 0, 1])) for _ in range(n)]
    for a, b in zip(ops.importance_score(ipt, unc, dims), reference.importance_score(cpu(ipt), cpu(unc), dims)):
        close(a, b, dtype)


@FUZZ
@given(st.data(), st.booleans(), st.booleans())
def test_masked_adamw_step(device, data, amsgrad, maximize):
    dtype, stat, params, grads = draw_params_and_grads(data, device, finite_params=True)
    sizes = [data.draw(st.sampled_from([1, 3, 4, 64, 300])) for _ in params]
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    blocks, m, v, vmax, steps = [], [], [], [], []
    for p, bs in zip(params, sizes):
        nb = (p.numel() + bs - 1) // bs
        chosen = torch.nonzero(torch.rand(nb, generator=gen) < 0.6).flatten()
        chosen = chosen[torch.randperm(chosen.numel(), generator=gen)]  # any slot order is allowed
        a = chosen.numel()
        blocks.append(chosen.to(device))
        m.append(torch.randn(a * bs, generator=gen, dtype=torch.float64).to(stat).to(device))
        v.append(torch.rand(a * bs, generator=gen, dtype=torch.float64).to(stat).to(device))
        vmax.append(v[-1] * 1.5)
        steps.append(torch.randint(0, 5, (a,), generator=gen, dtype=torch.int32).to(device))
    vmax = vmax if amsgrad else []
    ref = [cpu(ts) for ts in (params, m, v, vmax, steps)]
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, eps=1e-8, amsgrad=amsgrad, maximize=maximize)
    ops.masked_adamw_step(params, grads, m, v, vmax, blocks, steps, sizes, **hp)
    reference.masked_adamw_step(ref[0], cpu(grads), ref[1], ref[2], ref[3], cpu(blocks), ref[4], sizes, **hp)
    for a, b in zip(params, ref[0]):
        close(a, b, dtype)
    for a, b in zip(m + v + vmax, ref[1] + ref[2] + ref[3]):
        close(a, b, stat)
    for a, b in zip(steps, ref[4]):
        assert torch.equal(a.cpu(), b)


@FUZZ
@given(st.data())
def test_rank_prune(device, data):
    n = data.draw(st.integers(1, 4))
    stat = data.draw(st.sampled_from([torch.float32, torch.float64]))
    e_dtype = data.draw(st.sampled_from(FLOATS))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    sizes = [(data.draw(st.sampled_from([0, 1, 3, 12])), data.draw(st.sampled_from([0, 1, 7, 33])),
              data.draw(st.sampled_from([0, 1, 5, 40]))) for _ in range(n)]
    # Coarse statistics (multiples of 1/4, some -0): exact sums and ties in the scores.
    def stats(rows, cols):
        values = torch.randint(0, 3, (rows, cols), generator=gen).to(stat) / 4
        return torch.where(torch.rand(rows, cols, generator=gen) < 0.2, -values, values).to(device)
    lora_e = [torch.randn(r, 1, generator=gen).to(e_dtype).to(device) for r, _, _ in sizes]
    lists = [[stats(r, 1) for r, _, _ in sizes], [stats(r, 1) for r, _, _ in sizes],
             [stats(r, i) for r, i, _ in sizes], [stats(r, i) for r, i, _ in sizes],
             [stats(o, r) for r, _, o in sizes], [stats(o, r) for r, _, o in sizes]]
    total = sum(r for r, _, _ in sizes)
    k = data.draw(st.integers(0, total + 1))
    if k > total:
        with pytest.raises(ValueError, match="num_masked must be in"):
            ops.rank_prune(lora_e, *lists, k)
        return
    ref_e = cpu(lora_e)
    scores, keep = ops.rank_prune(lora_e, *lists, k)
    ref_scores, ref_keep = reference.rank_prune(ref_e, *[cpu(lst) for lst in lists], k)
    torch.testing.assert_close(scores.cpu(), ref_scores, rtol=1e-6, atol=1e-12, equal_nan=True)
    assert torch.equal(keep.cpu(), ref_keep)
    for a, b in zip(lora_e, ref_e):
        assert torch.equal(a.cpu(), b)
