"""act_tangent / act_tangent_backward against the reference (forward-mode AD and autograd through
torch's activations) on fresh random inputs at odd sizes; opcheck; gradcheck; bad input."""
import pytest
import torch

from tolerance import assert_within_pytorch_error
from winnow import ops, reference

KINDS = list(ops.ACT_KINDS)
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-6, 1e-6)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1,), (7,), (4097,), (3, 5, 33)])
def test_forward_and_backward_match_the_reference(device, kind, dtype, shape):
    z = (3 * torch.randn(shape, dtype=torch.float64)).to(dtype).to(device)
    dz, gy, gdy = (torch.randn(shape, dtype=torch.float64).to(dtype).to(device) for _ in range(3))
    got = [*ops.act_tangent(z, dz, kind), *ops.act_tangent_backward(z, dz, gy, gdy, kind)]
    same = [*reference.act_tangent(z, dz, kind), *reference.act_tangent_backward(z, dz, gy, gdy, kind)]
    if dtype in (torch.bfloat16, torch.float16):  # against float64, within 2x PyTorch's own error
        up = [t.double() for t in (z, dz, gy, gdy)]
        exact = [*reference.act_tangent(*up[:2], kind), *reference.act_tangent_backward(*up, kind)]
        for a, e, b in zip(got, exact, same):
            assert_within_pytorch_error(a, e, b)
        return
    for a, b in zip(got, same):
        torch.testing.assert_close(a, b, rtol=TOL[dtype][0], atol=TOL[dtype][1])


def test_non_contiguous_and_empty_inputs(device):
    z = torch.randn(6, 9, device=device).t()
    dz = torch.randn(9, 6, device=device)
    y, dy = ops.act_tangent(z, dz, "gelu")
    ry, rdy = reference.act_tangent(z, dz, "gelu")
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(dy, rdy)
    e = torch.empty(0, 3, device=device)
    y, dy = ops.act_tangent(e, e, "silu")
    assert y.shape == dy.shape == (0, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    z = (2 * torch.randn(13, dtype=torch.float64)).requires_grad_(True)
    if kind == "relu":  # keep away from the kink, where finite differences are meaningless
        z = (z.detach() + 0.2 * torch.sign(z.detach())).requires_grad_(True)
    dz = torch.randn(13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.act_tangent(a, b, kind), (z, dz))


def test_opcheck(device):
    z, dz = torch.randn(5, 7, device=device, requires_grad=True), torch.randn(5, 7, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.winnow.act_tangent.default, (z, dz, 1))
    g = [torch.randn(5, 7, device=device) for _ in range(4)]
    torch.library.opcheck(torch.ops.winnow.act_tangent_backward.default, (*g, 2))


def test_bad_input_names_the_argument():
    z = torch.randn(4)
    with pytest.raises(ValueError, match="kind"):
        ops.act_tangent(z, z, "elu")
    with pytest.raises(ValueError, match="kind"):
        torch.ops.winnow.act_tangent(z, z, 7)
    with pytest.raises(ValueError, match="dz has shape"):
        ops.act_tangent(z, torch.randn(5), "tanh")
    with pytest.raises(TypeError, match="dz is Double"):
        ops.act_tangent(z, torch.randn(4, dtype=torch.float64), "tanh")
    with pytest.raises(TypeError, match="z must be float"):
        ops.act_tangent(torch.arange(4), torch.arange(4), "relu")
    with pytest.raises(TypeError, match="tensors"):
        ops.act_tangent([1.0], z, "relu")
