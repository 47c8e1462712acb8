"""oba_channel_sums (per output / input channel sums of OBA scores) against winnow.reference."""
import pytest
import torch

from winnow import ops, reference


@pytest.mark.parametrize("shape,groups", [((1, 1), 1), ((7, 3), 1), ((4097, 2), 1), ((6, 4, 3, 3), 3),
                                          ((8, 5, 7), 2), ((4, 0, 2), 2), ((0, 3), 1)])
def test_channel_sums_kernel_matches_the_reference(device, shape, groups):
    s = torch.randn(shape, dtype=torch.float64, device=device)
    rows, cols = ops.oba_channel_sums(s, groups)
    want_rows, want_cols = reference.oba_channel_sums(s, groups)
    torch.testing.assert_close(rows, want_rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cols, want_cols, rtol=1e-12, atol=1e-12)
    assert cols.shape == (groups * shape[1],)
    torch.library.opcheck(torch.ops.winnow.oba_channel_sums.default, (s, groups))
    strided = torch.randn(shape[1], shape[0], dtype=torch.float64, device=device).t()  # a transposed view
    if len(shape) == 2:
        torch.testing.assert_close(ops.oba_channel_sums(strided, groups)[1],
                                   reference.oba_channel_sums(strided.contiguous(), groups)[1])


def test_channel_sums_kernel_bad_input():
    with pytest.raises(TypeError, match="scores must be float64"):
        ops.oba_channel_sums(torch.randn(3, 2), 1)
    with pytest.raises(ValueError, match="at least 2 dims"):
        ops.oba_channel_sums(torch.randn(3, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="divisible by groups"):
        ops.oba_channel_sums(torch.randn(5, 2, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        ops.oba_channel_sums(torch.randn(4, 2, dtype=torch.float64), 0)
    with pytest.raises(TypeError, match="groups must be an int"):
        ops.oba_channel_sums(torch.randn(4, 2, dtype=torch.float64), 1.0)
