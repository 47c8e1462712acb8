"""masked_adamw_step (the kernel) against winnow.reference at random densities and sizes."""
import pytest
import torch

from tolerance import assert_within_pytorch_error
from winnow import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def make_case(device, numels, block_sizes, density, amsgrad, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params, grads, m, v, vmax, blocks, steps = [], [], [], [], [], [], []
    for i, (n, bs) in enumerate(zip(numels, block_sizes)):
        dtype = DTYPES[i % len(DTYPES)]
        params.append(torch.randn(n, generator=gen).to(dtype).to(device))
        grads.append(torch.randn(n, generator=gen).to(dtype).to(device))
        nb = (n + bs - 1) // bs
        chosen = (torch.rand(nb, generator=gen) < density).nonzero().view(-1)
        chosen = chosen[torch.randperm(chosen.numel(), generator=gen)]  # any slot order is allowed
        a = chosen.numel()
        blocks.append(chosen.to(device))
        steps.append(torch.randint(0, 5, (a,), generator=gen, dtype=torch.int32).to(device))
        sd = stat_dtype(dtype)
        m.append((torch.randn(a * bs, generator=gen) * 0.1).to(sd).to(device))
        v.append(torch.rand(a * bs, generator=gen).to(sd).to(device) * 0.01)
        vmax.append(v[-1] * 1.5 if amsgrad else None)
    return params, grads, m, v, [x for x in vmax if x is not None], blocks, steps


def clone_all(case):
    return [[t.clone() for t in lst] for lst in case]


@pytest.mark.parametrize("numels, block_sizes", [
    ([1, 7, 4097], [64, 64, 64]),
    ([4097, 1000, 33], [1, 7, 128]),
    pytest.param([2**20 + 3, 5], [64, 5], marks=pytest.mark.slow),  # one block exactly covers a tensor
    ([300, 301], [300, 301]),            # whole-tensor granularity
    ([70001, 9], [100, 3]),              # 100 does not divide a 32k chunk: chunks end at whole blocks
])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("amsgrad, maximize", [(False, False), (True, False), (False, True), (True, True)])
def test_matches_reference(device, numels, block_sizes, density, amsgrad, maximize):
    case = make_case(device, numels, block_sizes, density, amsgrad)
    ref = clone_all(case)
    exact = [[t.double() if t.is_floating_point() else t.clone() for t in lst] for lst in case]  # all float64
    before = [p.clone() for p in case[0]]
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.05, eps=1e-8, amsgrad=amsgrad, maximize=maximize)
    for _ in range(3):
        ops.masked_adamw_step(*case, block_sizes, **hp)
        reference.masked_adamw_step(*ref, block_sizes, **hp)
        reference.masked_adamw_step(*exact, block_sizes, **hp)
    for k, (got, want) in enumerate(zip(case, ref)):
        for g, w, e in zip(got, want, exact[k]):
            if g.dtype in (torch.bfloat16, torch.float16):  # bf16 / fp16 parameters
                assert_within_pytorch_error(g, e, w)
            else:
                torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    # inactive elements are bit-identical
    for p, b, bs, p0 in zip(case[0], case[5], block_sizes, before):
        active = torch.zeros(p.numel(), dtype=torch.bool, device=device)
        idx = (b[:, None] * bs + torch.arange(bs, device=device)).view(-1)
        active[idx[idx < p.numel()]] = True
        assert torch.equal(p[~active], p0[~active])


def test_more_tensors_than_one_launch_holds(device):
    numels = [1, 300, 4097, 65] * 10  # 40 parameters of mixed dtypes (a CUDA launch holds 28)
    sizes = [1, 7, 64, 65] * 10
    case = make_case(device, numels, sizes, 0.5, True)
    ref = clone_all(case)
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.05, eps=1e-8, amsgrad=True, maximize=True)
    ops.masked_adamw_step(*case, sizes, **hp)
    reference.masked_adamw_step(*ref, sizes, **hp)
    for got, want in zip(case, ref):
        for g, w in zip(got, want):
            tol = (1e-2, 1e-3) if g.dtype in (torch.bfloat16, torch.float16) else (1e-6, 1e-7)
            torch.testing.assert_close(g, w, rtol=tol[0], atol=tol[1])


def test_grad_scale_and_found_inf(device):
    case = make_case(device, [1000], [64], 0.5, False)
    ref = clone_all(case)
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8)
    scale = torch.tensor([1024.0], device=device)
    ops.masked_adamw_step(*case, [64], **hp, grad_scale=scale, found_inf=torch.zeros(1, device=device))
    reference.masked_adamw_step(*ref, [64], **hp, grad_scale=scale)
    for got, want in zip(case, ref):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    frozen = clone_all(case)
    ops.masked_adamw_step(*case, [64], **hp, found_inf=torch.ones(1, device=device))
    for got, want in zip(case, frozen):
        for g, w in zip(got, want):
            assert torch.equal(g, w)  # nothing moved, no step counted


@pytest.mark.parametrize("bad", [7, -1, 2**61 + 1])  # 2**61 + 1: its offset 64 * block wraps int64
def test_bad_block_index_is_an_error_not_a_write(bad):
    """The CPU raises this message; the CUDA kernel prints the same one (WINNOW_BLOCK_RANGE_FORMAT)
    and raises a device-side assert (run by `make gpu-check`: an assert ends the CUDA context)."""
    p, g = torch.randn(100), torch.randn(100)
    blocks = torch.tensor([0, bad])  # 100 elements / 64 = 2 blocks
    state = lambda: torch.zeros(2 * 64)  # noqa: E731
    before, steps = p.clone(), torch.zeros(2, dtype=torch.int32)
    message = rf"masked_adamw_step: active_blocks\[0\] holds block {bad} but params\[0\] has 2 blocks of 64"
    with pytest.raises(ValueError, match=message):
        ops.masked_adamw_step([p], [g], [state()], [state()], [], [blocks], [steps], [64],
                              lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8)
    assert torch.equal(p, before) and not steps.any()


def test_opcheck(device):
    case = make_case(device, [37, 300], [8, 300], 0.7, True)
    args = (*case, [8, 300], 1e-3, 0.9, 0.999, 0.01, 1e-8, True, False, None, None)
    torch.library.opcheck(torch.ops.winnow.masked_adamw_step.default, args)


def test_state_shape_errors():
    p, g = [torch.randn(10)], [torch.randn(10)]
    blocks, steps = [torch.tensor([0, 1])], [torch.zeros(2, dtype=torch.int32)]
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8)
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] must be a contiguous tensor of .* = 10 elements"):
        ops.masked_adamw_step(p, g, [torch.zeros(9)], [torch.zeros(10)], [], blocks, steps, [5], **hp)
    with pytest.raises(ValueError, match=r"block_sizes\[0\] must be >= 1"):
        ops.masked_adamw_step(p, g, [torch.zeros(0)], [torch.zeros(0)], [], blocks, steps, [0], **hp)
    with pytest.raises(TypeError, match=r"block_steps\[0\] must be an int32 tensor"):
        ops.masked_adamw_step(p, g, [torch.zeros(10)], [torch.zeros(10)], [], blocks, [torch.zeros(2)], [5], **hp)
    with pytest.raises(ValueError, match=r"max_exp_avg_sqs has 0 tensors but params has 1"):
        ops.masked_adamw_step(p, g, [torch.zeros(10)], [torch.zeros(10)], [], blocks, steps, [5], **hp, amsgrad=True)
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        ops.masked_adamw_step(p, g, [torch.zeros(10)], [torch.zeros(10)], [], blocks, steps, [5],
                              **{**hp, "lr": float("nan")})
