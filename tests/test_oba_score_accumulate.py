"""oba_score_accumulate (OBA's float64 score epilogue) against winnow.reference."""
import pytest
import torch

from winnow import ops, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_score_epilogue_kernel_matches_the_reference(device, dtype):
    shapes = [(1,), (7,), (4097,), (5, 3, 3, 3)] + [(33,)] * 50  # more tensors than one CUDA launch holds
    thetas = [torch.randn(s, dtype=torch.float64).to(dtype).to(device) for s in shapes]
    hs = [torch.randn(s, dtype=torch.float64).to(dtype).to(device) for s in shapes]
    ours = [torch.randn(s, dtype=torch.float64, device=device) for s in shapes]
    ref = [o.clone() for o in ours]
    ops.oba_score_accumulate(thetas, hs, ours)
    reference.oba_score_accumulate(thetas, hs, ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=1e-15)  # same float64 products, in any order
    torch.library.opcheck(torch.ops.winnow.oba_score_accumulate.default, (thetas, hs, [o.clone() for o in ours]))


def test_score_epilogue_kernel_bad_input():
    t = [torch.randn(3)]
    with pytest.raises(TypeError, match="scores\\[0\\] must be float64"):
        ops.oba_score_accumulate(t, t, [torch.zeros(3)])
    with pytest.raises(ValueError, match="h_thetas\\[0\\] has shape"):
        ops.oba_score_accumulate(t, [torch.randn(4)], [torch.zeros(3, dtype=torch.float64)])
    with pytest.raises(ValueError, match="empty"):
        ops.oba_score_accumulate([], [], [])
    with pytest.raises(ValueError, match="contiguous"):
        ops.oba_score_accumulate([torch.randn(3, 2)], [torch.randn(3, 2)], [torch.zeros(2, 3, dtype=torch.float64).t()])
