"""Build of torch-winnow: setuptools hands the extension winnow._C to CMake + ninja.

Install into an environment that already has torch:  pip install --no-build-isolation .
Environment knobs:
  WINNOW_CUDA=0|1        force the CUDA kernels off / on (default: on when torch is a CUDA
                         build and nvcc is found; no GPU is needed to build them)
  CUDA_HOME              CUDA toolkit root (default /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST   e.g. "8.0;9.0+PTX" (default "8.0;9.0+PTX;10.0": A100, H100/H200, B200)
  CMAKE_CUDA_ARCHITECTURES or CUDAARCHS
                         CMake's form ("90-real;100-real"), used when TORCH_CUDA_ARCH_LIST is unset
  MAX_JOBS               parallel compile jobs
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _find_nvcc():
    """nvcc of CUDA_HOME, else /usr/local/cuda, else the one on PATH (resolved to its toolkit)."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc")
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def _want_cuda():
    """(build CUDA?, nvcc path, reason) from WINNOW_CUDA, torch's build and the toolkit."""
    import torch

    forced = os.environ.get("WINNOW_CUDA", "").strip()
    if forced not in ("", "0", "1"):
        raise RuntimeError(f"WINNOW_CUDA must be 0 or 1, got {forced!r}")
    nvcc = _find_nvcc()
    if forced == "0":
        return False, None, "WINNOW_CUDA=0"
    if forced == "1":
        if torch.version.cuda is None:
            raise RuntimeError("WINNOW_CUDA=1 but the installed torch is a CPU-only build")
        if nvcc is None:
            raise RuntimeError("WINNOW_CUDA=1 but nvcc was not found: set CUDA_HOME to the CUDA toolkit")
        return True, nvcc, "WINNOW_CUDA=1"
    if torch.version.cuda is None:
        return False, None, "torch is a CPU-only build"
    if nvcc is None:
        return False, None, "no nvcc found (set CUDA_HOME)"
    return True, nvcc, f"torch CUDA {torch.version.cuda} and {nvcc}"


def _cmake():
    """CMake of the `cmake` PyPI package when installed (new enough for CUDA 13), else PATH's."""
    try:
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        return shutil.which("cmake") or "cmake"


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class cmake_build_ext(build_ext):
    def build_extension(self, ext):
        with_cuda, nvcc, reason = _want_cuda()
        print(f"winnow: CUDA kernels {'ON' if with_cuda else 'OFF'} ({reason})", flush=True)
        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # A fixed build folder in the checkout (not setuptools' temp dir) so that a re-install
        # only recompiles what changed.
        build_dir = ROOT / "build" / ("cuda" if with_cuda else "cpu")
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            _cmake(), str(ROOT), "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir / 'lib'}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DWINNOW_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
        import pybind11

        args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        if with_cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
            # Always passed (empty when unset), so that the cache never keeps an old choice.
            user_archs = os.environ.get("CMAKE_CUDA_ARCHITECTURES") or os.environ.get("CUDAARCHS") or ""
            args.append(f"-DWINNOW_CUDA_ARCHITECTURES={user_archs}")
        if shutil.which("ccache"):
            args += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache", "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
        subprocess.check_call(args, cwd=build_dir)
        build = [_cmake(), "--build", ".", "--target", "_C"]
        if os.environ.get("MAX_JOBS"):
            build += ["-j", os.environ["MAX_JOBS"]]
        subprocess.check_call(build, cwd=build_dir)
        built = Path(self.get_ext_filename(ext.name)).name
        extdir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "lib" / built, extdir / built)


setup(
    packages=find_packages("python"),
    package_dir={"": "python"},
    ext_modules=[CMakeExtension("winnow._C")],
    cmdclass={"build_ext": cmake_build_ext},
)
