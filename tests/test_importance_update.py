"""importance_update_* against winnow.reference and peft."""
import pytest
import torch

from winnow import ops, reference

SIZES = [1, 7, 4097, pytest.param(2**20 + 3, marks=pytest.mark.slow)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def make_tensor(n, dtype, device, contiguous=True):
    if contiguous:
        return torch.randn(n, device=device).to(dtype)
    # every other element of a twice-as-long buffer: a non-contiguous view with n elements
    return torch.randn(2 * n, device=device).to(dtype)[::2]


def make_case(device, sizes, contiguous=True, nonfinite_at=()):
    params, grads = [], []
    for i, n in enumerate(sizes):
        dtype = DTYPES[i % len(DTYPES)]  # mixed dtypes in one call
        params.append(make_tensor(n, dtype, device, contiguous))
        grads.append(make_tensor(n, dtype, device, contiguous))
    for t, k in nonfinite_at:
        grads[t][k] = float("nan") if k % 2 else float("inf")
    return params, grads


def zeros_like_stats(params, randomize=False):
    out = []
    for p in params:
        s = torch.zeros(p.shape, dtype=stat_dtype(p.dtype), device=p.device)
        if randomize:
            s.uniform_(0, 1)
        out.append(s)
    return out


def assert_close(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_adalora_matches_reference(device, n, contiguous):
    sizes = [n, max(1, n // 3), 7, n]
    params, grads = make_case(device, sizes, contiguous, nonfinite_at=[(0, 0)])
    ipt, unc = zeros_like_stats(params, True), zeros_like_stats(params, True)
    ipt_ref, unc_ref = [t.clone() for t in ipt], [t.clone() for t in unc]
    cnt = torch.zeros(len(params), dtype=torch.int64, device=device)
    cnt_ref = cnt.clone()
    for step in range(3):
        if step:
            grads = [torch.randn_like(g) for g in grads]
        ops.importance_update_adalora(params, grads, ipt, unc, 0.85, 0.7, cnt)
        reference.importance_update_adalora(params, grads, ipt_ref, unc_ref, 0.85, 0.7, cnt_ref)
        assert_close(ipt, ipt_ref)
        assert_close(unc, unc_ref)
    assert cnt.tolist() == cnt_ref.tolist()
    assert cnt[0].item() == 1  # the one NaN/inf gradient was skipped and counted


def test_nonfinite_gradients_never_poison_statistics(device):
    p = torch.randn(1000, device=device)
    g = torch.randn(1000, device=device)
    g[::7] = float("nan")
    g[3::7] = float("inf")
    g[5::7] = -float("inf")
    ipt, unc = zeros_like_stats([p], True), zeros_like_stats([p], True)
    before = [ipt[0].clone(), unc[0].clone()]
    cnt = torch.zeros(1, dtype=torch.int64, device=device)
    ops.importance_update_adalora([p], [g], ipt, unc, 0.85, 0.85, cnt)
    bad = ~torch.isfinite(g)
    assert torch.isfinite(ipt[0]).all() and torch.isfinite(unc[0]).all()
    assert torch.equal(ipt[0][bad], before[0][bad]) and torch.equal(unc[0][bad], before[1][bad])
    assert not torch.equal(ipt[0][~bad], before[0][~bad])
    assert cnt.item() == int(bad.sum())
    # an overflowing product is non-finite too
    big = torch.full((3,), 3e38, device=device)
    ops.importance_update_adalora([big], [big], ipt[:1][0][:3].clone().split(3), unc[0][:3].clone().split(3), 0.5, 0.5, cnt)
    assert cnt.item() == int(bad.sum()) + 3


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("exponent", [1.0, 0.0, 0.5])
@pytest.mark.parametrize("beta", [0.0, 0.9])
@pytest.mark.parametrize("with_mask", [False, True])
def test_id3_matches_reference(device, n, exponent, beta, with_mask):
    sizes = [n, 7, max(1, n // 5)]
    params, grads = make_case(device, sizes, contiguous=n != 7, nonfinite_at=[(1, 3)])
    scores = zeros_like_stats(params, True)
    scores_ref = [s.clone() for s in scores]
    masks = [torch.rand(p.shape, device=device) < 0.3 for p in params] if with_mask else None
    cnt = torch.zeros(len(params), dtype=torch.int64, device=device)
    cnt_ref = cnt.clone()
    for _ in range(2):
        ops.importance_update_id3(params, grads, scores, masks, eps=1e-3, exponent=exponent, beta=beta, nonfinite=cnt)
        reference.importance_update_id3(
            params, grads, scores_ref, masks, eps=1e-3, exponent=exponent, beta=beta, nonfinite=cnt_ref
        )
        assert_close(scores, scores_ref)
    assert cnt.tolist() == cnt_ref.tolist()
    if not with_mask:
        assert cnt[1].item() == 2  # skipped on both calls


def test_id3_leaves_unmasked_entries_alone(device):
    p, g = torch.randn(500, device=device), torch.randn(500, device=device)
    scores = [torch.full((500,), -1.0, device=device)]
    mask = torch.rand(500, device=device) < 0.5
    cnt = torch.zeros(1, dtype=torch.int64, device=device)
    ops.importance_update_id3([p], [g], scores, [mask], eps=1e-8, exponent=1.0, nonfinite=cnt)
    assert (scores[0][mask] == -1).all()
    expected = g.abs() / (p.abs() + 1e-8)
    torch.testing.assert_close(scores[0][~mask], expected[~mask], rtol=1e-6, atol=0)


def test_more_tensors_than_one_launch_holds(device):
    """60 tensors of mixed dtypes: a CUDA launch holds 48."""
    params, grads = make_case(device, [1, 33, 4097] * 20, nonfinite_at=[(59, 5)])
    ipt, unc = zeros_like_stats(params, True), zeros_like_stats(params, True)
    ipt_ref, unc_ref = [t.clone() for t in ipt], [t.clone() for t in unc]
    cnt, cnt_ref = (torch.zeros(60, dtype=torch.int64, device=device) for _ in range(2))
    ops.importance_update_adalora(params, grads, ipt, unc, 0.85, 0.7, cnt)
    reference.importance_update_adalora(params, grads, ipt_ref, unc_ref, 0.85, 0.7, cnt_ref)
    assert_close(ipt + unc, ipt_ref + unc_ref)
    assert cnt.tolist() == cnt_ref.tolist() and cnt[59].item() == 1
    masks = [torch.rand(p.shape, device=device) < 0.3 for p in params]
    ops.importance_update_id3(params, grads, ipt, masks, eps=1e-3, exponent=0.5, beta=0.5, nonfinite=cnt)
    reference.importance_update_id3(params, grads, ipt_ref, masks, eps=1e-3, exponent=0.5, beta=0.5, nonfinite=cnt_ref)
    assert_close(ipt, ipt_ref)
    assert cnt.tolist() == cnt_ref.tolist()


# ---- against peft's RankAllocator.update_ipt (the anchor) ----


def _peft_adalora_model(dtype):
    peft = pytest.importorskip("peft")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(16, 24)
            self.v = torch.nn.Linear(24, 16)

        def forward(self, x):
            return self.v(torch.relu(self.q(x)))

    cfg = peft.AdaLoraConfig(init_r=6, target_r=2, target_modules=["q", "v"], total_step=20, tinit=2, tfinal=2)
    model = peft.get_peft_model(Net(), cfg).to(dtype)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_E" in n:
                p.normal_()  # E starts at 0; give it values so |p g| is not trivially 0
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_peft_update_ipt(dtype):
    import winnow

    model = _peft_adalora_model(dtype)
    allocator = model.base_model.rankallocator
    names = [n for n, _ in model.named_parameters() if "lora_" in n and "default" in n]
    params = [dict(model.named_parameters())[n] for n in names]
    tracker = winnow.ImportanceTracker(params, mode="adalora", beta1=allocator.beta1, beta2=allocator.beta2)
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(6):
        x = torch.randn(8, 16, dtype=dtype)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        allocator.update_ipt(model)
        tracker.update()
        opt.step()
    for n, a, u in zip(names, tracker.exp_avg_ipt, tracker.exp_avg_unc):
        torch.testing.assert_close(a, allocator.exp_avg_ipt[n], rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(u, allocator.exp_avg_unc[n], rtol=1e-6, atol=1e-12)
    # element scores equal peft's _element_score, and the row/column means its mask_to_budget uses
    scores = tracker.scores()
    for n, s in zip(names, scores):
        torch.testing.assert_close(s, allocator._element_score(n), rtol=1e-6, atol=1e-15)
    dims = [1 if "lora_A" in n else 0 if "lora_B" in n else None for n in names]
    for n, s, d in zip(names, tracker.scores(dims), dims):
        if d is not None:
            torch.testing.assert_close(s, allocator._element_score(n).mean(dim=d), rtol=1e-6, atol=1e-15)
