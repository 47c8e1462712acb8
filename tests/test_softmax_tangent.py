"""softmax_tangent / softmax_tangent_backward against the reference (forward-mode AD through
torch.softmax, autograd through the formula) on fresh random rows of odd lengths; opcheck;
gradcheck; bad input."""
import pytest
import torch

from tolerance import assert_within_pytorch_error
from winnow import ops, reference

TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-6, 1e-6)}


def rows(shape, dtype, device):
    p = torch.softmax(3 * torch.randn(shape, dtype=torch.float64), -1).to(dtype).to(device)
    ds, g = (torch.randn(shape, dtype=torch.float64).to(dtype).to(device) for _ in range(2))
    return p, ds, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1,), (7,), (4097,), (2, 3, 33), (5, 1)])
def test_forward_and_backward_match_the_reference(device, dtype, shape):
    p, ds, g = rows(shape, dtype, device)
    got = [ops.softmax_tangent(p, ds), *ops.softmax_tangent_backward(p, ds, g)]
    same = [reference.softmax_tangent(p, ds), *reference.softmax_tangent_backward(p, ds, g)]
    if dtype in (torch.bfloat16, torch.float16):
        # Against the op's formula on the given p in float64 (a rounded p does not sum to 1 exactly,
        # and the reference's softmax of log p would renormalise it), within 2x the error of the
        # same formula in PyTorch at the dtype's precision.
        def formula(p, ds):
            return p * (ds - (p * ds).sum(-1, keepdim=True))

        up = [t.double() for t in (p, ds, g)]
        exact = [formula(*up[:2]), *reference.softmax_tangent_backward(*up)]
        same = [formula(p, ds), *same[1:]]
        for a, e, b in zip(got, exact, same):
            assert_within_pytorch_error(a, e, b)
        return
    for a, b in zip(got, same):
        torch.testing.assert_close(a, b, rtol=TOL[dtype][0], atol=TOL[dtype][1])


def test_masked_entries_stay_zero(device):
    s = torch.randn(4, 9, dtype=torch.float64, device=device)
    s[:, 2] = float("-inf")  # a masked key: p = 0 there, and so is its tangent
    p = torch.softmax(s, -1)
    dp = ops.softmax_tangent(p, torch.randn_like(p))
    assert (dp[:, 2] == 0).all()
    torch.testing.assert_close(dp.sum(-1), torch.zeros(4, dtype=torch.float64, device=device))


def test_non_contiguous_and_empty_inputs(device):
    p = torch.softmax(torch.randn(9, 6, device=device), 0).t()
    ds = torch.randn(6, 9, device=device)
    torch.testing.assert_close(ops.softmax_tangent(p, ds), reference.softmax_tangent(p.contiguous(), ds))
    e = torch.empty(0, 3, device=device)
    assert ops.softmax_tangent(e, e).shape == (0, 3)
    z = torch.empty(3, 0, device=device)
    assert ops.softmax_tangent(z, z).shape == (3, 0)


def test_gradcheck():
    p = torch.softmax(torch.randn(3, 11, dtype=torch.float64), -1).requires_grad_(True)
    ds = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.softmax_tangent, (p, ds))


def test_opcheck(device):
    p, ds, g = rows((4, 7), torch.float32, device)
    torch.library.opcheck(torch.ops.winnow.softmax_tangent.default,
                          (p.requires_grad_(True), ds.requires_grad_(True)))
    torch.library.opcheck(torch.ops.winnow.softmax_tangent_backward.default, (p.detach(), ds.detach(), g))


def test_bad_input_names_the_argument():
    p = torch.rand(4, 5)
    with pytest.raises(ValueError, match="ds has shape"):
        ops.softmax_tangent(p, torch.rand(4, 6))
    with pytest.raises(TypeError, match="ds is Double"):
        ops.softmax_tangent(p, p.double())
    with pytest.raises(TypeError, match="p must be float"):
        ops.softmax_tangent(torch.ones(4, 5, dtype=torch.int64), torch.ones(4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one dimension"):
        ops.softmax_tangent(torch.tensor(0.5), torch.tensor(0.1))
    with pytest.raises(ValueError, match="g has shape"):
        ops.softmax_tangent_backward(p, p, torch.rand(5))
    with pytest.raises(TypeError, match="tensors"):
        ops.softmax_tangent([0.5], p)


def test_calls_that_need_no_gradient_skip_the_autograd_wrapper_and_the_rest_keep_it():
    """ops.softmax_tangent / ops.act_tangent go past the Python autograd registration when no input
    requires grad (same values, no graph); with one that does they stay differentiable, and
    inside a torch.func transform they take the registered path as before."""
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, 9, generator=gen, dtype=torch.float64), -1)
    ds = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    plain = ops.softmax_tangent(p, ds)
    assert plain.grad_fn is None and torch.equal(plain, torch.ops.winnow.softmax_tangent(p, ds))
    y, dy = ops.act_tangent(ds, p, "gelu")
    assert y.grad_fn is None and dy.grad_fn is None
    leaf = ds.clone().requires_grad_()
    out = ops.softmax_tangent(p, leaf)
    assert out.grad_fn is not None
    (g,) = torch.autograd.grad(out.square().sum(), leaf)
    torch.testing.assert_close(g, reference.softmax_tangent_backward(p, ds, 2 * plain)[1], rtol=1e-12, atol=1e-12)
    (gz,) = torch.autograd.grad(ops.act_tangent(leaf, p, "gelu")[1].sum(), leaf)
    assert gz.abs().sum() > 0
    # torch.func transforms keep the registered path, and its refusal (not a silent zero gradient)
    for f in (lambda d: ops.softmax_tangent(p, d).square().sum(), lambda z: ops.act_tangent(z, p, "gelu")[1].sum()):
        with pytest.raises(RuntimeError, match="functorch transforms"):
            torch.func.grad(f)(ds)
