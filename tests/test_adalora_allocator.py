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


def test_bad_schedule_config():
    with pytest.raises(ValueError, match="tinit .* must be < total_step - tfinal"):
        check_schedule(10, 4, tinit=8, tfinal=2, total_step=10)
    with pytest.raises(ValueError, match="target_r > init_r"):
        check_schedule(10, 12, tinit=0, tfinal=0, total_step=10)
    with pytest.raises(ValueError, match="total_step must be set"):
        check_schedule(10, 4, tinit=0, tfinal=0, total_step=None)
