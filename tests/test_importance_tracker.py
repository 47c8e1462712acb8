"""ImportanceTracker: update from .grad, scores, state_dict round trip."""
import pytest
import torch

import winnow
from winnow import reference


def params_with_grads(device):
    params = [torch.randn(10, 4, device=device, requires_grad=True), torch.randn(7, device=device, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def test_update_reads_grad_and_matches_reference(device):
    params = params_with_grads(device)
    tracker = winnow.ImportanceTracker(params, mode="adalora", beta1=0.8, beta2=0.9)
    ipt = [torch.zeros(p.shape, device=device) for p in params]
    unc = [torch.zeros(p.shape, device=device) for p in params]
    cnt = torch.zeros(2, dtype=torch.int64, device=device)
    for _ in range(3):
        tracker.update()
        reference.importance_update_adalora(
            [p.detach() for p in params], [p.grad for p in params], ipt, unc, 0.8, 0.9, cnt
        )
        for p in params:
            p.grad = torch.randn_like(p)
    for a, b in zip(tracker.exp_avg_ipt + tracker.exp_avg_unc, ipt + unc):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert tracker.step == 3
    for s, a, u in zip(tracker.scores(), ipt, unc):
        torch.testing.assert_close(s, a * u, rtol=1e-6, atol=0)


def test_params_without_grad_are_skipped(device):
    params = params_with_grads(device)
    params[1].grad = None
    tracker = winnow.ImportanceTracker(params)
    params[0].grad[0, 0] = float("nan")
    tracker.update()
    assert torch.count_nonzero(tracker.exp_avg_ipt[1]) == 0
    assert torch.count_nonzero(tracker.exp_avg_ipt[0]) == 39
    assert tracker.nonfinite_count == 1


def test_id3_mode_with_mask(device):
    params = params_with_grads(device)
    tracker = winnow.ImportanceTracker(params, mode="id3", eps=1e-3, exponent=1.0)
    masks = [torch.zeros(p.shape, dtype=torch.bool, device=device) for p in params]
    masks[0][:5] = True
    tracker.update(unmasked=masks)
    s = tracker.scores()
    assert (s[0][:5] == 0).all()
    torch.testing.assert_close(s[0][5:], params[0].grad[5:].abs() / (params[0].detach()[5:].abs() + 1e-3))
    with pytest.raises(ValueError, match="unmasked has 1 tensors"):
        tracker.update(unmasked=masks[:1])


@pytest.mark.parametrize("mode", ["adalora", "id3"])
def test_state_dict_round_trip_continues_identically(device, mode):
    torch.manual_seed(1)
    grads = [[torch.randn(10, 4, device=device), torch.randn(7, device=device)] for _ in range(6)]
    base = [torch.randn(10, 4, device=device), torch.randn(7, device=device)]

    def run(tracker, params, steps):
        for k in steps:
            for p, g in zip(params, grads[k]):
                p.grad = g.clone()
            tracker.update()

    params_a = [b.clone().requires_grad_() for b in base]
    a = winnow.ImportanceTracker(params_a, mode=mode)
    run(a, params_a, range(6))

    params_b = [b.clone().requires_grad_() for b in base]
    b = winnow.ImportanceTracker(params_b, mode=mode)
    run(b, params_b, range(3))
    sd = b.state_dict()
    params_c = [x.clone().requires_grad_() for x in base]
    c = winnow.ImportanceTracker(params_c, mode=mode)
    c.load_state_dict(sd)
    run(c, params_c, range(3, 6))
    for x, y in zip(a.scores(), c.scores()):
        assert torch.equal(x, y)
    assert c.step == 6


def test_load_state_dict_rejects_other_layout():
    t = winnow.ImportanceTracker([torch.zeros(3), torch.zeros(4)])
    other = winnow.ImportanceTracker([torch.zeros(3), torch.zeros(5)]).state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['exp_avg_ipt'\]\[1\] has shape \(5,\), expected \(4,\)"):
        t.load_state_dict(other)
    with pytest.raises(ValueError, match="is for mode 'id3'"):
        t.load_state_dict(winnow.ImportanceTracker([torch.zeros(3)], mode="id3").state_dict())
