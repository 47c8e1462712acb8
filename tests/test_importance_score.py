"""importance_score (AdaLoRA's element scores and their row / column means) against winnow.reference."""
import pytest
import torch

from winnow import ops, reference


@pytest.mark.parametrize("n", [1, 7, 4097])
def test_importance_score_matches_reference(device, n):
    shapes = [(n, 3), (5, n), (n,), (2, 7)]
    ipt = [torch.rand(s, device=device) for s in shapes] + [torch.rand(3, n, device=device, dtype=torch.float64)]
    unc = [torch.rand_like(t) for t in ipt]
    dims = [0, 1, None, None, 1]
    got = ops.importance_score(ipt, unc, dims)
    want = reference.importance_score(ipt, unc, dims)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)


def test_more_tensors_than_one_launch_holds(device):
    """60 tensors of both dtypes (a CUDA launch of means holds 40)."""
    shaped = [torch.rand(3 + i % 5, 40 - i % 7, device=device, dtype=torch.float64 if i % 3 else torch.float32)
              for i in range(60)]
    shaped_unc = [torch.rand_like(t) for t in shaped]
    dims = [(None, 0, 1)[i % 3] for i in range(60)]
    got = ops.importance_score(shaped, shaped_unc, dims)
    want = reference.importance_score(shaped, shaped_unc, dims)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)


def test_importance_score_of_long_columns_and_rows(device):
    """Means over 4097 rows (tiles of columns on CUDA) and along 4097 columns (a warp per row)."""
    ipt = [torch.rand(4097, 37, device=device), torch.rand(37, 4097, device=device, dtype=torch.float64),
           torch.rand(0, 5, device=device), torch.rand(5, 0, device=device)]
    unc = [torch.rand_like(t) for t in ipt]
    dims = [0, 1, 0, 1]
    for g, w in zip(ops.importance_score(ipt, unc, dims), reference.importance_score(ipt, unc, dims)):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12, equal_nan=True)
