import subprocess
import sys

import pytest
import torch

import winnow
from winnow import _extension


def test_build_info_reports_torch_and_cuda():
    info = winnow.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["torch_runtime_version"] == torch.__version__
    assert isinstance(info["cuda_kernels"], bool)
    if info["cuda_kernels"]:
        assert "90" in info["cuda_archs"] or info["cuda_archs"]  # built for at least one arch
    assert info["cuda_available"] == torch.cuda.is_available()


def test_ops_are_registered_torch_ops():
    for name in ("importance_update_adalora", "importance_update_id3", "importance_score"):
        assert hasattr(torch.ops.winnow, name)


def test_mismatched_torch_build_explains_how_to_rebuild(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    with pytest.raises(ImportError, match="no-build-isolation"):
        _extension.load()


def test_missing_extension_explains_how_to_rebuild():
    # A fresh interpreter where winnow._C cannot be imported.
    code = (
        "import sys, torch\n"
        "sys.modules['winnow._C'] = None\n"
        "try:\n"
        "    import winnow\n"
        "except ImportError as e:\n"
        "    print('MSG', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MSG" in out and "pip install --no-build-isolation" in out
