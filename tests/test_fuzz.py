"""Hypothesis fuzzing of every op's Python entry (winnow.ops): random shapes (empty, 1, odd),
dtypes (half, bfloat16, float, double, and integers that must be refused), strides (transposed
and sliced views) and NaN / inf. Each call must either equal the reference (winnow.reference;
NaN where it has NaN) or raise a clear ValueError / TypeError - never crash or hang."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from winnow import ops, reference

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TOL = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-5, torch.float64: 1e-10}
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

shapes = st.lists(st.sampled_from([0, 1, 2, 3, 7, 9]), min_size=1, max_size=3).map(tuple) | st.just((4097,))


@st.composite
def tensors(draw, shape=None, dtype=None, nonfinite=True, positive=False):
    """A tensor of `shape` and `dtype`, maybe a non-contiguous view, maybe with NaN / inf."""
    shape = draw(shapes) if shape is None else shape
    dtype = draw(st.sampled_from(FLOATS)) if dtype is None else dtype
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    if layout == "transposed" and len(shape) >= 2:
        t = torch.randn(shape[::-1], generator=g, dtype=torch.float64).transpose(0, -1)
    elif layout == "sliced":
        t = torch.randn((*shape[:-1], 2 * shape[-1]), generator=g, dtype=torch.float64)[..., ::2]
    else:
        t = torch.randn(shape, generator=g, dtype=torch.float64)
    if positive:
        t = t.abs()
    if nonfinite and t.numel() and draw(st.booleans()):
        flat = t.reshape(-1) if t.is_contiguous() else None
        idx = draw(st.integers(0, t.numel() - 1))
        value = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        if flat is not None:
            flat[idx] = value
        else:
            t.view(-1) if False else t.__setitem__(tuple(torch.unravel_index(torch.tensor(idx), t.shape)), value)
    return t.to(dtype)


def draw_params_and_grads(data, finite_params=False):
    """(dtype, its fp32/fp64 state dtype, 1-3 params, same-shaped grads) for the multi-tensor ops."""
    n = data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from(FLOATS))
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    params = [data.draw(tensors(dtype=dtype, nonfinite=not finite_params)) for _ in range(n)]
    if finite_params:  # parameters updated in place: contiguous
        params = [p.contiguous() for p in params]
    grads = [data.draw(tensors(shape=p.shape, dtype=dtype)) for p in params]
    return dtype, stat, params, grads


def close(got, want, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True)


@FUZZ
@given(st.data(), st.sampled_from(list(ops.ACT_KINDS)))
def test_act_tangent(data, kind):
    z = data.draw(tensors())
    dz = data.draw(tensors(shape=z.shape, dtype=z.dtype))
    y, dy = ops.act_tangent(z, dz, kind)
    ry, rdy = reference.act_tangent(z, dz, kind)
    # Exact agreement (NaN included) wherever the inputs are finite. At z = +-inf torch's own
    # GELU gives NaN where the limit exists (gelu(inf) = inf, slope 1); winnow gives the limit,
    # so there only the reference's finite values are compared.
    finite_in = torch.isfinite(z) & torch.isfinite(dz)
    for ours, ref in ((y, ry), (dy, rdy)):
        keep = finite_in | torch.isfinite(ref)
        close(ours[keep], ref[keep], z.dtype)


@FUZZ
@given(st.data())
def test_act_tangent_refuses_mismatches(data):
    z = data.draw(tensors(nonfinite=False))
    other = data.draw(st.sampled_from(["dtype", "shape", "int"]))
    if other == "dtype":
        dz = z.to(torch.float64 if z.dtype != torch.float64 else torch.float32)
    elif other == "shape":
        dz = torch.zeros((*z.shape, 2), dtype=z.dtype)
    else:
        z, dz = z.to(torch.int64), z.to(torch.int64)
    with pytest.raises((ValueError, TypeError), match="dz|z must be"):
        ops.act_tangent(z, dz, "relu")


@FUZZ
@given(st.data())
def test_softmax_tangent(data):
    s = data.draw(tensors(nonfinite=False))
    p = torch.softmax(s.double(), -1).to(s.dtype)
    ds = data.draw(tensors(shape=s.shape, dtype=s.dtype))
    close(ops.softmax_tangent(p, ds), reference.softmax_tangent(p, ds), s.dtype)


@FUZZ
@given(st.data())
def test_oba_score_accumulate(data):
    n = data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from(FLOATS))
    thetas = [data.draw(tensors(dtype=dtype)) for _ in range(n)]
    hs = [data.draw(tensors(shape=t.shape, dtype=dtype)) for t in thetas]
    ours = [torch.zeros(t.shape, dtype=torch.float64) for t in thetas]
    ref = [o.clone() for o in ours]
    ops.oba_score_accumulate(thetas, hs, ours)
    reference.oba_score_accumulate(thetas, hs, ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


@FUZZ
@given(st.data())
def test_oba_channel_sums(data):
    dtype = data.draw(st.sampled_from([*FLOATS, torch.int64]))
    groups = data.draw(st.sampled_from([1, 2, 3]))
    s = data.draw(tensors(dtype=torch.float64))
    if dtype != torch.float64:
        with pytest.raises(TypeError, match="float64"):
            ops.oba_channel_sums(s.to(dtype), groups)
        return
    if s.dim() < 2 or s.shape[0] % groups:
        with pytest.raises(ValueError, match="2 dims|divisible"):
            ops.oba_channel_sums(s, groups)
        return
    for got, want in zip(ops.oba_channel_sums(s, groups), reference.oba_channel_sums(s, groups)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, equal_nan=True)


@FUZZ
@given(st.data())
def test_importance_update_adalora(data):
    dtype, stat, params, grads = draw_params_and_grads(data)
    n = len(params)
    ipt = [data.draw(tensors(shape=p.shape, dtype=stat, nonfinite=False, positive=True)).contiguous() for p in params]
    unc = [data.draw(tensors(shape=p.shape, dtype=stat, nonfinite=False, positive=True)).contiguous() for p in params]
    ri, ru = [t.clone() for t in ipt], [t.clone() for t in unc]
    nf, rnf = torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
    ops.importance_update_adalora(params, grads, ipt, unc, 0.85, 0.9, nf)
    reference.importance_update_adalora(params, grads, ri, ru, 0.85, 0.9, rnf)
    for a, b in zip(ipt + unc, ri + ru):
        close(a, b, stat)
    assert torch.equal(nf, rnf)


@FUZZ
@given(st.data(), st.booleans())
def test_importance_update_id3(data, with_mask):
    dtype, stat, params, grads = draw_params_and_grads(data)
    n = len(params)
    scores = [torch.rand(p.shape, dtype=stat) for p in params]
    masks = [torch.rand(p.shape) < 0.3 for p in params] if with_mask else None
    ref = [s.clone() for s in scores]
    nf, rnf = torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
    ops.importance_update_id3(params, grads, scores, masks, eps=1e-6, exponent=1.0, beta=0.5, nonfinite=nf)
    reference.importance_update_id3(params, grads, ref, masks, eps=1e-6, exponent=1.0, beta=0.5, nonfinite=rnf)
    for a, b in zip(scores, ref):
        close(a, b, stat)
    assert torch.equal(nf, rnf)


@FUZZ
@given(st.data())
def test_masked_topk(data):
    n = data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    scores = [data.draw(tensors(dtype=dtype)) for _ in range(n)]
    masks = [torch.rand(s.shape) < 0.3 for s in scores] if data.draw(st.booleans()) else None
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
    got = ops.masked_topk(scores, masks, k)
    want = reference.masked_topk(scores, masks, k)
    for a, b in zip(got, want):
        assert torch.equal(a.sort().values, b), (a, b)


@FUZZ
@given(st.data())
def test_importance_score(data):
    n = data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    ipt = [data.draw(tensors(shape=data.draw(st.tuples(st.integers(1, 9), st.integers(1, 9))), dtype=dtype,
                             nonfinite=False, positive=True)).contiguous() for _ in range(n)]
    unc = [torch.rand(t.shape, dtype=dtype) for t in ipt]
    dims = [data.draw(st.sampled_from([None, 0, 1])) for _ in range(n)]
    for a, b in zip(ops.importance_score(ipt, unc, dims), reference.importance_score(ipt, unc, dims)):
        close(a, b, dtype)


@FUZZ
@given(st.data())
def test_masked_adamw_step(data):
    dtype, stat, params, grads = draw_params_and_grads(data, finite_params=True)
    sizes = [data.draw(st.sampled_from([1, 3, 4, 64])) for _ in params]
    blocks = []
    for p, bs in zip(params, sizes):
        nb = (p.numel() + bs - 1) // bs
        blocks.append(torch.nonzero(torch.rand(nb) < 0.6).flatten().to(torch.int64))
    m = [torch.randn(b.numel() * bs, dtype=stat) for b, bs in zip(blocks, sizes)]
    v = [torch.rand(b.numel() * bs, dtype=stat) for b, bs in zip(blocks, sizes)]
    steps = [torch.randint(0, 5, (b.numel(),), dtype=torch.int32) for b in blocks]
    ref = [[t.clone() for t in ts] for ts in (params, m, v, steps)]
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, eps=1e-8)
    ops.masked_adamw_step(params, grads, m, v, [], blocks, steps, sizes, **hp)
    reference.masked_adamw_step(ref[0], grads, ref[1], ref[2], [], blocks, ref[3], sizes, **hp)
    for a, b in zip(params, ref[0]):
        close(a, b, dtype)
    for a, b in zip(m + v, ref[1] + ref[2]):
        close(a, b, stat)
    for a, b in zip(steps, ref[3]):
        assert torch.equal(a, b)
