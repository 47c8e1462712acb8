"""Bad input gets a ValueError / TypeError that names the argument, never a crash."""
import pytest
import torch

import winnow
from winnow import ops


def good(device="cpu"):
    p = [torch.randn(5, device=device), torch.randn(2, 3, device=device)]
    g = [torch.randn_like(t) for t in p]
    a = [torch.zeros(t.shape, device=device) for t in p]
    u = [torch.zeros(t.shape, device=device) for t in p]
    return p, g, a, u, torch.zeros(2, dtype=torch.int64, device=device)


def call_adalora(p, g, a, u, c, beta1=0.85, beta2=0.85):
    ops.importance_update_adalora(p, g, a, u, beta1, beta2, c)


def test_empty_list():
    with pytest.raises(ValueError, match="params is an empty list"):
        call_adalora([], [], [], [], torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="exp_avg_ipt is an empty list"):
        ops.importance_score([], [])


def test_length_mismatch():
    p, g, a, u, c = good()
    with pytest.raises(ValueError, match="grads has 1 tensors but params has 2"):
        call_adalora(p, g[:1], a, u, c)
    with pytest.raises(ValueError, match="exp_avg_unc has 1 tensors"):
        call_adalora(p, g, a, u[:1], c)


def test_shape_mismatch():
    p, g, a, u, c = good()
    g[1] = torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \[3, 2\] but params\[1\] has shape \[2, 3\]"):
        call_adalora(p, g, a, u, c)
    p, g, a, u, c = good()
    a[0] = torch.zeros(6)
    with pytest.raises(ValueError, match=r"exp_avg_ipt\[0\] has shape"):
        call_adalora(p, g, a, u, c)


def test_dtype_mismatch():
    p, g, a, u, c = good()
    g[0] = g[0].double()
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype Double but params\[0\] has dtype Float"):
        call_adalora(p, g, a, u, c)
    p, g, a, u, c = good()
    u[1] = u[1].double()
    with pytest.raises(TypeError, match=r"exp_avg_unc\[1\] must be Float"):
        call_adalora(p, g, a, u, c)
    p, g, a, u, c = good()
    p[0], g[0] = p[0].bfloat16(), g[0].bfloat16()
    a[0] = a[0].bfloat16()
    with pytest.raises(TypeError, match=r"exp_avg_ipt\[0\] must be Float .* of dtype BFloat16"):
        call_adalora(p, g, a, u, c)


def test_integer_and_complex_tensors():
    p, g, a, u, c = good()
    p[0], g[0] = torch.arange(5), torch.arange(5)
    with pytest.raises(TypeError, match=r"params\[0\] must be float16, bfloat16, float32 or float64, got Long"):
        call_adalora(p, g, a, u, c)
    p, g, a, u, c = good()
    p[1], g[1] = torch.randn(2, 3, dtype=torch.complex64), torch.randn(2, 3, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"params\[1\] must be float16"):
        call_adalora(p, g, a, u, c)
    with pytest.raises(TypeError, match="ImportanceTracker|params\\[0\\] must be a floating-point tensor"):
        winnow.ImportanceTracker([torch.arange(3)])


def test_counter_and_hyperparameters():
    p, g, a, u, _ = good()
    with pytest.raises(TypeError, match="nonfinite must be an int64 tensor"):
        call_adalora(p, g, a, u, torch.zeros(2))
    with pytest.raises(ValueError, match="nonfinite must be a contiguous 1-D tensor with one entry per tensor"):
        call_adalora(p, g, a, u, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"beta1 must be in \[0, 1\)"):
        call_adalora(p, g, a, u, torch.zeros(2, dtype=torch.int64), beta1=1.0)
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\)"):
        call_adalora(p, g, a, u, torch.zeros(2, dtype=torch.int64), beta2=float("nan"))
    with pytest.raises(TypeError, match="beta1 must be a number"):
        call_adalora(p, g, a, u, torch.zeros(2, dtype=torch.int64), beta1="0.8")


def test_not_a_list():
    p, g, a, u, c = good()
    with pytest.raises(TypeError, match="params must be a list of tensors"):
        call_adalora(p[0], g, a, u, c)
    with pytest.raises(TypeError, match=r"grads\[1\] must be a tensor"):
        call_adalora(p, [g[0], None], a, u, c)


def test_non_contiguous_state_is_rejected_but_inputs_are_fine():
    p, g, a, u, c = good()
    a[1] = torch.zeros(3, 2).t()
    with pytest.raises(ValueError, match=r"exp_avg_ipt\[1\] must be contiguous"):
        call_adalora(p, g, a, u, c)
    p, g, a, u, c = good()
    p[1], g[1] = torch.randn(3, 2).t(), torch.randn(3, 2).t()
    call_adalora(p, g, a, u, c)  # non-contiguous params/grads are read through a copy
    torch.testing.assert_close(a[1], 0.15 * (p[1] * g[1]).abs())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_device_mismatch():
    p, g, a, u, c = good()
    g[1] = g[1].cuda()
    with pytest.raises(ValueError, match=r"grads\[1\] is on cuda:0 but params\[1\] is on cpu"):
        call_adalora(p, g, a, u, c)


def test_device_mismatch_meta():
    # A tensor on another device (meta stands in where no GPU exists) is named, not crashed on.
    p, g, a, u, c = good()
    g[1] = torch.empty(2, 3, device="meta")
    with pytest.raises(ValueError, match=r"grads\[1\] is on meta but the other tensors are on cpu"):
        call_adalora(p, g, a, u, c)


def test_id3_bad_inputs():
    p, g, _, _, c = good()
    s = [torch.zeros(t.shape) for t in p]
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        ops.importance_update_id3(p, g, s, eps=-1.0, nonfinite=c)
    with pytest.raises(ValueError, match="exponent must be finite"):
        ops.importance_update_id3(p, g, s, exponent=float("inf"), nonfinite=c)
    with pytest.raises(TypeError, match=r"unmasked\[0\] must be a bool tensor"):
        ops.importance_update_id3(p, g, s, [torch.zeros(5), torch.zeros(2, 3)], nonfinite=c)
    with pytest.raises(ValueError, match=r"unmasked\[1\] has shape"):
        ops.importance_update_id3(p, g, s, [torch.zeros(5, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)], nonfinite=c)


def test_score_bad_inputs():
    a = [torch.rand(3, 4), torch.rand(5)]
    u = [torch.rand(3, 4), torch.rand(5)]
    with pytest.raises(ValueError, match=r"mean_dims\[1\] = 0 needs a 2-D tensor"):
        ops.importance_score(a, u, [1, 0])
    with pytest.raises(ValueError, match=r"mean_dims\[0\] must be -1 \(none\), 0 or 1, got 2"):
        ops.importance_score(a, u, [2, None])
    with pytest.raises(ValueError, match="mean_dims has 1 tensors"):
        ops.importance_score(a, u, [None])
    with pytest.raises(TypeError, match=r"exp_avg_ipt\[0\] must be float32 or float64"):
        ops.importance_score([a[0].half()], [u[0].half()])


def test_tracker_bad_config():
    with pytest.raises(ValueError, match="params is an empty list"):
        winnow.ImportanceTracker([])
    with pytest.raises(ValueError, match="mode must be one of"):
        winnow.ImportanceTracker([torch.zeros(2)], mode="bogus")
    with pytest.raises(ValueError, match="beta1 must be a number in"):
        winnow.ImportanceTracker([torch.zeros(2)], beta1=1.5)
    with pytest.raises(TypeError, match="single tensor"):
        winnow.ImportanceTracker(torch.zeros(2))
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.zeros(2).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        winnow.ImportanceTracker([p]).update()


def _bad_calls():
    """(op, args, exception, message) of calls every kernel refuses; the fake kernels must too."""
    f32, f64 = torch.float32, torch.float64
    p = [torch.randn(5), torch.randn(2, 3)]
    stats = [torch.zeros(5), torch.zeros(2, 3)]
    nf = torch.zeros(2, dtype=torch.int64)
    blocks, steps = [torch.tensor([0, 1])], [torch.zeros(2, dtype=torch.int32)]
    w = torch.ops.winnow
    return [
        (w.importance_update_adalora, (p, p, [stats[0], stats[1].double()], stats, 0.8, 0.8, nf), TypeError,
         r"exp_avg_unc\[1\]|exp_avg_ipt\[1\] must be Float|exp_avg_ipt\[1\] must be torch.float32"),
        (w.importance_update_id3, (p, p, stats[:1], [], 1e-8, 1.0, 0.0, nf), ValueError,
         "scores has 1 tensors but params has 2"),
        (w.importance_score, ([torch.rand(5)], [torch.rand(5)], [0]), ValueError, r"mean_dims\[0\] = 0 needs a 2-D"),
        (w.masked_adamw_step, ([torch.randn(10)], [torch.randn(10)], [torch.zeros(9)], [torch.zeros(10)], [], blocks,
                               steps, [5], 1e-3, 0.9, 0.999, 0.0, 1e-8, False, False, None, None), ValueError,
         r"exp_avgs\[0\] must be a contiguous tensor of"),
        (w.rank_prune, ([torch.randn(3, 1)] * 2, *([[torch.rand(3, 1)]] * 6), 1), ValueError,
         "ipt_E has 1 tensors but lora_E has 2"),
        (w.masked_topk, ([torch.rand(4)], [], 5), ValueError, r"k must be in \[0, 4\]"),
        (w.masked_topk, ([torch.rand(4).half()], [], 1), TypeError, "scores must be float32 or float64"),
        (w.act_tangent, (torch.randn(3), torch.randn(3, dtype=f64), 1), TypeError, "dz is"),
        (w.softmax_tangent, (torch.rand(3, 4), torch.rand(4, 3)), ValueError, "ds has shape"),
        (w.oba_score_accumulate, ([torch.randn(3)], [torch.randn(3)], [torch.zeros(3, dtype=f32)]), TypeError,
         r"scores\[0\] must be float64"),
        (w.oba_channel_sums, (torch.zeros(6, 4, dtype=f64), 4), ValueError, "divisible by groups"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_fake_kernels_refuse_what_the_kernels_refuse(case):
    """torch.compile traces with the fake kernels: a bad call fails there as it does eagerly."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op, args, exc, message = _bad_calls()[case]
    with pytest.raises(exc, match=message):
        op(*args)
    with FakeTensorMode() as mode:
        fake = torch.utils._pytree.tree_map_only(torch.Tensor, mode.from_tensor, args)
        with pytest.raises(exc, match=message):
            op(*fake)
