"""winnow: importance-aware fine-tuning and pruning kernels for PyTorch."""
import torch

from winnow._extension import load as _load

_C = _load()

from winnow import adalora, ist, ops, optim, reference  # noqa: E402  (ops registers the fake kernels)
from winnow.id3 import ID3, apply_sparse  # noqa: E402
from winnow.importance import ImportanceTracker  # noqa: E402

__version__ = "0.1.0"


def build_info():
    """How this winnow was built, and what the running torch can use."""
    info = dict(_C.build_info())
    info["torch_runtime_version"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    info["winnow_version"] = __version__
    return info


__all__ = ["ID3", "ImportanceTracker", "adalora", "apply_sparse", "ist", "build_info", "ops", "optim", "reference"]
