"""The low-precision tolerance rule (flash-attention's): a bf16 / fp16 kernel is right when its
error against a float64 reference is at most twice the error of a same-precision PyTorch
implementation of the same function (plus one unit in the last place of the dtype, so that a
result the baseline happens to round exactly is not held to zero error)."""
import torch


def assert_within_pytorch_error(got, ref64, same_precision, slack: float = 2.0):
    dtype = got.dtype
    assert dtype in (torch.bfloat16, torch.float16), dtype
    got, ref, base = got.double().cpu(), ref64.double().cpu(), same_precision.double().cpu()
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), finite), "non-finite where the float64 reference is finite, or back"
    if not finite.any():
        return
    info = torch.finfo(dtype)
    ulp = info.eps * ref[finite].abs() + info.tiny
    err = ((got - ref)[finite].abs() - ulp).max().item()
    base_err = (base - ref)[finite].abs().max().item()
    assert err <= slack * base_err, f"{dtype} error {err:.3g} above {slack} x PyTorch's own {base_err:.3g}"
