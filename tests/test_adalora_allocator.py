"""winnow's fused RankAllocator against peft's, on the same deterministic runs."""
import pytest
import torch
from nets import QKVNet

peft = pytest.importorskip("peft")

import winnow  # noqa: E402
from winnow import ops, reference  # noqa: E402
from winnow.adalora import RankAllocator, accelerate, budget_schedule, check_schedule  # noqa: E402


Net = QKVNet


def peft_model(dtype, **cfg):
    torch.manual_seed(0)
    config = peft.AdaLoraConfig(target_modules=["q", "k", "v"], **cfg)
    return peft.get_peft_model(Net(), config).to(dtype)


SCHEDULES = [
    dict(init_r=6, target_r=2, total_step=30, tinit=3, tfinal=5, deltaT=2),
    dict(init_r=4, target_r=1, total_step=25, tinit=0, tfinal=0, deltaT=1),
    dict(init_r=8, target_r=3, total_step=40, tinit=10, tfinal=10, deltaT=5),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_same_run_as_peft(dtype, schedule):
    a = peft_model(dtype, **schedule)
    b = accelerate(peft_model(dtype, **schedule))
    assert isinstance(b.base_model.rankallocator, RankAllocator)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for step in range(schedule["total_step"]):
        x = torch.randn(8, 16, generator=gen, dtype=dtype)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        # the statistics are identical before each allocation
        if step < schedule["total_step"] - schedule["tfinal"]:
            pa, pb = a.base_model.rankallocator, b.base_model.rankallocator
            assert pa.budget_schedule(step) == pb.budget_schedule(step)
        a.base_model.update_and_allocate(step)
        b.base_model.update_and_allocate(step)
        for (na, x_a), (nb, x_b) in zip(a.named_parameters(), b.named_parameters()):
            assert na == nb
            torch.testing.assert_close(x_b, x_a, rtol=1e-5, atol=1e-7, msg=f"{na} at step {step}")
        ca, cb = a.peft_config["default"], b.peft_config["default"]
        assert ca.rank_pattern == cb.rank_pattern
        pa, pb = a.base_model.rankallocator, b.base_model.rankallocator
        for n, t in pa.exp_avg_ipt.items():
            torch.testing.assert_close(pb.exp_avg_ipt[n], t, rtol=1e-6, atol=1e-12)
            torch.testing.assert_close(pb.exp_avg_unc[n], pa.exp_avg_unc[n], rtol=1e-6, atol=1e-12)
    final = a.peft_config["default"].rank_pattern
    assert sum(sum(v) for v in final.values()) == schedule["target_r"] * 3


def test_budget_schedule_matches_peft_every_step():
    for s in SCHEDULES:
        model = peft_model(torch.float32, **s)
        theirs = model.base_model.rankallocator
        init = theirs.init_bgt
        for step in range(s["total_step"] + 3):
            assert budget_schedule(step, init, theirs.target_bgt, s["tinit"], s["tfinal"], s["total_step"],
                                   s["deltaT"]) == theirs.budget_schedule(step)


def test_triplet_scores_and_masks_match_peft_mask_to_budget():
    model = peft_model(torch.float32, init_r=6, target_r=2, total_step=30, tinit=3, tfinal=5, deltaT=2)
    theirs = model.base_model.rankallocator
    x = torch.randn(8, 16)
    model(x).pow(2).mean().backward()
    theirs.update_ipt(model)
    ours = RankAllocator(model, theirs.peft_config, "default")
    ours.update_ipt(model)
    for budget in (17, 11, 6):  # 18 = init budget: k = 0, which peft cannot do (kthvalue error)
        assert ours.mask_to_budget(model, budget) == theirs.mask_to_budget(model, budget)
    assert ours.host_syncs == 3


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


def test_bad_schedule_config():
    with pytest.raises(ValueError, match="tinit .* must be < total_step - tfinal"):
        check_schedule(10, 4, tinit=8, tfinal=2, total_step=10)
    with pytest.raises(ValueError, match="target_r > init_r"):
        check_schedule(10, 12, tinit=0, tfinal=0, total_step=10)
    with pytest.raises(ValueError, match="total_step must be set"):
        check_schedule(10, 4, tinit=0, tfinal=0, total_step=None)
