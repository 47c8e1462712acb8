import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import winnow
from winnow import _extension


def test_build_info_reports_torch_and_cuda():
    info = winnow.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["torch_runtime_version"] == torch.__version__
    assert isinstance(info["cuda_kernels"], bool)
    assert info["cuda_available"] == torch.cuda.is_available()


def test_cuda_archs_are_well_formed_and_cover_the_visible_gpu():
    info = winnow.build_info()
    if not info["cuda_kernels"]:
        assert info["cuda_archs"] == ""
        pytest.skip("built without CUDA kernels")
    archs = info["cuda_archs"].split()
    assert archs and all(re.fullmatch(r"\d+[af]?-(real|virtual)", a) for a in archs), archs
    if torch.cuda.is_available():  # SASS for this GPU, or PTX of an arch at most its own to JIT
        major, minor = torch.cuda.get_device_capability()
        cc = 10 * major + minor
        real = {int(re.match(r"\d+", a)[0]) for a in archs if a.endswith("-real")}
        virtual = {int(re.match(r"\d+", a)[0]) for a in archs if a.endswith("-virtual")}
        assert cc in real or any(v <= cc for v in virtual), f"{archs} cannot run on compute capability {cc}"


def _family(op: str) -> str:
    """The files an op lives in: its own name, or the op it is a variant or the backward of."""
    for suffix in ("_backward", "_adalora", "_id3"):
        if op.endswith(suffix):
            return op[: -len(suffix)]
    return op


def test_every_op_is_found_by_its_name_in_every_layer():
    """The README's layout rule: op <op> of family <f> has csrc/include/winnow/<f>.h,
    csrc/cpu/<f>.cpp, csrc/cuda/<f>.cu, winnow.ops.<op>, winnow.reference.<op>, tests/test_<f>.py."""
    from winnow import ops, reference

    root = Path(__file__).resolve().parents[1]
    names = re.findall(r'm\.def\(\s*"(\w+)\(', (root / "csrc" / "bindings.cpp").read_text())
    public = [n for n in names if not n.startswith("_")]
    assert len(public) >= 12, public
    for op in public:
        f = _family(op)
        for path in (f"csrc/include/winnow/{f}.h", f"csrc/cpu/{f}.cpp", f"csrc/cuda/{f}.cu", f"tests/test_{f}.py"):
            assert (root / path).is_file(), f"{op}: no {path}"
        assert op in (root / f"csrc/cpu/{f}.cpp").read_text() and op in (root / f"csrc/cuda/{f}.cu").read_text(), op
        assert callable(getattr(ops, op, None)) and op in ops.__all__, f"{op}: no winnow.ops.{op}"
        assert callable(getattr(reference, op, None)), f"{op}: no winnow.reference.{op}"


def _cmake():
    try:
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        return shutil.which("cmake")


@pytest.mark.parametrize("arch_list, user, expected", [
    ("", "", "80-real;90-real;90-virtual;100-real"),         # the default: A100, H100/H200 + PTX, B200
    ("8.6 9.0+PTX", "", "86-real;90-real;90-virtual"),       # torch's spelling, spaces allowed
    ("", "90-real;100a-real", "90-real;100a-real"),          # CMAKE_CUDA_ARCHITECTURES / CUDAARCHS, verbatim
    ("9.0", "75-real", "90-real"),                           # TORCH_CUDA_ARCH_LIST wins
    ("9.x", "", "bad entry '9.x'"),
])
def test_cuda_arch_selection(tmp_path, arch_list, user, expected):
    """cmake/cuda_arch.cmake, run as CMake runs it in a build (no compiler needed)."""
    if _cmake() is None:
        pytest.skip("no cmake")
    module = Path(__file__).resolve().parents[1] / "cmake" / "cuda_arch.cmake"
    script = tmp_path / "archs.cmake"
    script.write_text(f'set(WINNOW_CUDA_ARCHITECTURES "{user}")\ninclude("{module}")\n'
                      'winnow_cuda_architectures(out)\nmessage(STATUS "ARCHS=${out}")\n')
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=arch_list)
    done = subprocess.run([_cmake(), "-P", str(script)], capture_output=True, text=True, env=env)
    assert expected in done.stdout + done.stderr
    assert (done.returncode == 0) == ("bad entry" not in expected)


def test_every_bound_op_is_a_registered_torch_op():
    """Every schema in csrc/bindings.cpp has a CPU kernel (and, in a CUDA build, a CUDA one)."""
    source = (Path(__file__).resolve().parents[1] / "csrc" / "bindings.cpp").read_text()
    names = re.findall(r'm\.def\(\s*"(\w+)\(', source)
    assert len(names) >= 13, names
    keys = ["CPU"] + (["CUDA"] if winnow.build_info()["cuda_kernels"] else [])
    for name in names:
        op = f"winnow::{name}"
        assert torch._C._dispatch_has_kernel(op), op
        for key in keys:  # its own kernel, or an ATen composition that serves every backend
            assert any(torch._C._dispatch_has_kernel_for_dispatch_key(op, k)
                       for k in (key, "CompositeExplicitAutograd")), f"{op} has no {key} kernel"


def test_mismatched_torch_build_explains_how_to_rebuild(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    with pytest.raises(ImportError, match="no-build-isolation"):
        _extension.load()


@pytest.mark.slow
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
