"""winnow.ID3: selection against brute force, exact budgets, untouched masked weights, resume,
export, the authors' toolkit, errors."""
import copy

import pytest
import torch

import winnow
from winnow import reference


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3))


def batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 10, generator=gen), torch.randn(4, 3, generator=gen)) for _ in range(n)]


def loss_of(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


def test_each_step_unmasks_the_brute_force_top_u():
    model = net()
    opt = winnow.ID3(model, budget=47, total_steps=6, eps=1e-3, exponent=1.0, lr=0.05, weight_decay=0.1)
    for step, batch in enumerate(batches(6)):
        opt.zero_grad()
        loss_of(model, batch).backward()
        before = {p: m.clone() for p, m in opt.masks().items()}
        params = list(model.parameters())
        h = [p.grad.abs() / (p.detach().abs() + 1e-3) for p in params]
        want = reference.masked_topk([x.reshape(-1) for x in h], [before[p].reshape(-1) for p in params],
                                     opt.unmask_count_at(step))
        opt.step()
        after = opt.masks()
        for p, w in zip(params, want):
            new = (after[p] & ~before[p]).reshape(-1).nonzero().view(-1)
            assert torch.equal(new, w)
            assert (after[p] | ~before[p]).all()  # masks only grow


@pytest.mark.parametrize("budget", [47, 230])  # small k: the fused pass; large k: the radix select
def test_the_fused_selection_and_the_stored_scores_choose_alike(budget):
    """One element per unit on the CPU selects with ops.id3_topk (H inside the selection, no score
    buffer); blocks and FSDP2 shards store scores first. Forced onto the second path, the same
    run unmasks the same weights at every step and ends bit-identical, a non-finite gradient
    included (it counts as H = 0 on both)."""
    runs = []
    for fused in (True, False):
        model = net()
        opt = winnow.ID3(model, budget=budget, total_steps=5, eps=1e-3, exponent=0.5, lr=0.05)
        assert opt._fused
        if not fused:
            opt._fused = False
            opt._scores = [torch.zeros_like(p) for p in opt._params]
        masks = []
        for step, batch in enumerate(batches(5)):
            opt.zero_grad()
            loss_of(model, batch).backward()
            if step == 2:
                model[0].weight.grad[0, :3] = torch.tensor([float("inf"), float("nan"), -float("inf")])
            opt.step()
            masks.append([m.clone() for m in opt.masks().values()])
        runs.append((masks, [p.detach().clone() for p in model.parameters()]))
    (masks_a, final_a), (masks_b, final_b) = runs
    for a, b in zip(masks_a, masks_b):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for x, y in zip(final_a, final_b):  # (an unmasked weight that got the inf gradient is NaN in both)
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_one_op_bookkeeping_equals_the_per_parameter_path(amsgrad):
    """The unmasking of every grown parameter in one op (ops' _id3_unmask) against the loop of
    per-parameter ops it replaced: same masks, state, start values and weights, bit for bit."""
    runs = []
    for together in (True, False):
        model = net()
        opt = winnow.ID3(model, budget=61, total_steps=6, lr=0.05, weight_decay=0.1, amsgrad=amsgrad)
        if not together:
            opt._unmask_together = lambda grown, chosen, opt=opt: [opt._unmask(i, chosen[i]) for i in grown]
        for batch in batches(6):
            opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step()
        state = [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in opt._params]
        initial = [torch.cat([v for _, v in lst]) for lst in opt._initial]
        runs.append((state, initial, [m.clone() for m in opt._unmasked], [p.detach().clone() for p in opt._params]))
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            if isinstance(x, dict):
                assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
            else:
                assert x.dtype == y.dtype and torch.equal(x, y)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_unmask_kernels_match_their_aten_composition(amsgrad):
    """The CPU kernels of _id3_unmask / _id3_mark_unmasked against the ATen composition that
    serves other devices (reached by redispatching past the CPU kernel): dtypes, empty lists."""
    gen = torch.Generator().manual_seed(2)
    params = [torch.randn(37, generator=gen), torch.randn(3, 5, generator=gen).double(),
              torch.randn(4097, generator=gen).bfloat16(), torch.randn(6, generator=gen)]
    chosen = [torch.tensor([0, 5, 36]), torch.tensor([2, 14]), torch.randperm(4097, generator=gen)[:40].sort().values,
              torch.zeros(0, dtype=torch.int64)]
    blocks = [torch.tensor([1, 9]), torch.zeros(0, dtype=torch.int64), torch.tensor([7]), torch.tensor([0, 1, 2])]
    steps = [torch.arange(1, b.numel() + 1, dtype=torch.int32) for b in blocks]
    moments = lambda: [torch.rand(b.numel(), generator=gen, dtype=torch.float64 if p.dtype == torch.float64  # noqa: E731
                                  else torch.float32) for b, p in zip(blocks, params)]
    args = (params, chosen, blocks, steps, moments(), moments(), moments() if amsgrad else [])
    composite = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    got = torch.ops.winnow._id3_unmask(*args)
    want = torch.ops.winnow._id3_unmask.default.redispatch(composite, *args)
    for g, w in zip(got, want):
        assert len(g) == len(w) and all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(g, w))
    masks = [torch.zeros(p.numel(), dtype=torch.bool) for p in params]
    twins = [m.clone() for m in masks]
    torch.ops.winnow._id3_mark_unmasked(masks, chosen)
    torch.ops.winnow._id3_mark_unmasked.default.redispatch(composite, twins, chosen)
    assert all(torch.equal(a, b) for a, b in zip(masks, twins)) and sum(int(m.sum()) for m in masks) == 45


def test_unmask_ops_check_their_lists():
    p, mask = torch.randn(5), torch.zeros(5, dtype=torch.bool)
    state = ([torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, dtype=torch.int32)], [torch.zeros(0)],
             [torch.zeros(0)], [])
    initial, blocks, steps, m, v, vmax = torch.ops.winnow._id3_unmask([p], [torch.tensor([1, 3])], *state)
    assert torch.equal(initial[0], p[[1, 3]]) and torch.equal(blocks[0], torch.tensor([1, 3]))
    assert steps[0].tolist() == [0, 0] and m[0].tolist() == [0, 0] and v[0].tolist() == [0, 0] and vmax == []
    torch.ops.winnow._id3_mark_unmasked([mask], [torch.tensor([1, 3])])
    assert torch.equal(mask, torch.tensor([False, True, False, True, False]))
    with pytest.raises(ValueError, match="chosen has 0 tensors"):
        torch.ops.winnow._id3_unmask([p], [], *state)
    with pytest.raises(TypeError, match=r"chosen\[0\] must be a 1-D int64"):
        torch.ops.winnow._id3_unmask([p], [torch.tensor([1.0])], *state)
    with pytest.raises(IndexError):
        torch.ops.winnow._id3_unmask([p], [torch.tensor([7])], *state)
    with pytest.raises(TypeError, match=r"unmasked\[0\] must be a bool"):
        torch.ops.winnow._id3_mark_unmasked([torch.zeros(5)], [torch.tensor([1])])
    assert torch.equal(mask, torch.tensor([False, True, False, True, False]))  # unchanged by the failures


@pytest.mark.parametrize("budget, total_steps", [(3, 10), (10, 10), (60, 10), (1, 1)])
@pytest.mark.parametrize("block_size", [1, 4])
def test_final_count_equals_budget(budget, total_steps, block_size):
    model = net()
    opt = winnow.ID3(model, budget=budget, total_steps=total_steps, lr=0.05, block_size=block_size)
    for batch in batches(total_steps):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    assert opt.unmasked_count() == budget
    assert sum(opt.unmask_count_at(t) for t in range(total_steps)) == budget


def test_a_step_with_nothing_to_unmask_scores_nothing(monkeypatch):
    """budget < total_steps: the steps after the budget is spent unmask nothing, so they do not
    score (no pass over the parameters) and only the unmasked weights move."""
    model = net()
    opt = winnow.ID3(model, budget=3, total_steps=10, lr=0.05)
    data = batches(10)
    for batch in data[:3]:
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    assert opt.unmasked_count() == 3
    for name in ("id3_topk", "importance_update_id3", "masked_topk"):
        monkeypatch.setattr(winnow.ops, name, lambda *a, **k: pytest.fail("scored with nothing to unmask"))
    masks = {p: m.clone() for p, m in opt.masks().items()}
    before = [p.detach().clone() for p in model.parameters()]
    for batch in data[3:]:
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    assert all(torch.equal(m, masks[p]) for p, m in opt.masks().items())
    moved = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
    assert 0 < moved <= 3


def test_masked_weights_are_bit_identical_even_with_weight_decay():
    model = net()
    start = [p.detach().clone() for p in model.parameters()]
    opt = winnow.ID3(model, budget=60, total_steps=5, lr=0.1, weight_decay=0.5)
    for batch in batches(5):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    masks = opt.masks()
    for p, p0 in zip(model.parameters(), start):
        assert torch.equal(p[~masks[p]], p0[~masks[p]])
        assert not torch.equal(p[masks[p]], p0[masks[p]])
    assert opt.state_bytes() == 60 * (4 + 4 + 8 + 4)  # m, v, block index, block step per unmasked weight


def test_resume_mid_run_is_bitwise_identical():
    data = batches(8)

    def run(resume_at=None):
        model = net()
        opt = winnow.ID3(model, budget=70, total_steps=8, lr=0.05, weight_decay=0.1, amsgrad=True)
        for t, batch in enumerate(data):
            if t == resume_at:
                sd, msd = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
                model = net()
                model.load_state_dict(msd)
                opt = winnow.ID3(model, budget=70, total_steps=8, lr=0.05, weight_decay=0.1, amsgrad=True)
                opt.load_state_dict(sd)
            opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step()
        return model

    for a, b in zip(run().parameters(), run(resume_at=3).parameters()):
        assert torch.equal(a, b)


def test_save_sparse_apply_sparse_reproduces_outputs(tmp_path):
    model = net()
    base = copy.deepcopy(model)
    opt = winnow.ID3(model, budget=40, total_steps=4, lr=0.1)
    for batch in batches(4):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    path = str(tmp_path / "delta.safetensors")
    opt.save_sparse(path, absolute=True)
    assert winnow.apply_sparse(base, path) == 40
    x = torch.randn(5, 10)
    torch.testing.assert_close(base(x), model(x), rtol=0, atol=1e-6)
    other = net()
    with torch.no_grad():
        other[0].weight.add_(1.0)
    with pytest.raises(ValueError, match="fingerprint differs"):
        winnow.apply_sparse(other, path)


def test_on_peft_lora_parameters():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(net(), peft.LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False))
    opt = winnow.ID3(model, budget=30, total_steps=3, lr=0.05)
    assert all("lora_" in n for n in opt.names)
    for batch in batches(3):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    assert opt.unmasked_count() == 30


def test_matches_the_authors_toolkit_where_semantics_agree():
    so = pytest.importorskip("selective_optimizers")
    from selective_optimizers.wrap import get_selective_optimizer

    # (1) lr = 0: the weights never move, so both see the same gradients; the masks chosen
    # at every step must agree (random scores: no ties, whose order the toolkit breaks differently).
    a, b = net(), net()
    theirs = get_selective_optimizer(torch.optim.Adam, "id3")(a.parameters(), lr=0.0, budget=45, max_steps=5,
                                                                  eps=1e-3, exp=1.0, verify=False)
    ours = winnow.ID3(b, budget=45, total_steps=5, eps=1e-3, exp=1.0, lr=0.0)
    for t, batch in enumerate(batches(5)):
        for model, opt in ((a, theirs), (b, ours)):
            opt.zero_grad()
            loss_of(model, batch).backward()
        theirs.global_step = t
        theirs.step()
        ours.step()
        chosen = [m for m in theirs.param_groups[0]["chosen_masks"]]
        for m_theirs, m_ours in zip(chosen, ours.masks().values()):
            assert torch.equal(m_theirs, m_ours)
    # (2) everything unmasked at the first step (total_steps=1): every element then has the
    # global step count, so the toolkit's dense Adam and our per-element steps agree. (With
    # later unmasking they differ on purpose: the toolkit bias-corrects a late element with the
    # global step, winnow with the element's own.)
    a, b = net(), net()
    n = sum(p.numel() for p in a.parameters())
    theirs = get_selective_optimizer(torch.optim.Adam, "id3")(a.parameters(), lr=1e-2, budget=n, max_steps=1,
                                                                  verify=False)
    ours = winnow.ID3(b, budget=n, total_steps=1, lr=1e-2)
    for batch in batches(1):
        for model, opt in ((a, theirs), (b, ours)):
            opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-7)
    assert so is not None


def test_bad_input():
    with pytest.raises(ValueError, match="budget must be an int in"):
        winnow.ID3(net(), budget=0, total_steps=5)
    with pytest.raises(ValueError, match="budget must be an int in"):
        winnow.ID3(net(), budget=10**6, total_steps=5)
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        winnow.ID3(net(), budget=10, total_steps=0)
    model = net()
    opt = winnow.ID3(model, budget=10, total_steps=1)
    for batch in batches(2)[:1]:
        loss_of(model, batch).backward()
        opt.step()
    with pytest.raises(ValueError, match="beyond it"):
        opt.step()


def test_exp_is_an_alias_of_exponent():
    """`exp=` (the authors' toolkit's name) sets the same exponent; giving both differently is an error."""
    model = net()
    assert winnow.ID3(model, budget=10, total_steps=2, exp=0.0).id3_exponent == 0.0
    assert winnow.ID3(model, budget=10, total_steps=2, exponent=0.5).id3_exponent == 0.5
    with pytest.raises(ValueError, match="exp is an alias of exponent"):
        winnow.ID3(model, budget=10, total_steps=2, exponent=0.5, exp=2.0)


def test_step_hooks_run_once_per_step():
    """ID3's step is MaskedAdamW's update after its own selection: torch's step hooks (and the
    profiler's range) once per step, not once more for the update inside."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    model = net()
    opt = winnow.ID3(model, budget=20, total_steps=4, lr=0.05)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    handle = register_optimizer_step_pre_hook(lambda o, args, kwargs: calls.append("global pre"))
    try:
        for batch in batches(2):
            loss_of(model, batch).backward()
            opt.step()
            opt.zero_grad()
    finally:
        handle.remove()
    assert calls == ["global pre", "pre", "post"] * 2
    loss_of(model, batches(1)[0]).backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert [e.name for e in prof.events()].count("Optimizer.step#ID3.step") == 1
