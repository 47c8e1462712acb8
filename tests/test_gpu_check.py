"""`make gpu-check` (benchmarks/gpu_check.sh + benchmarks/cuda_driver.py) stays runnable on a
machine without a GPU: the script refuses at once and says why, and the driver checks itself
with the CPU standing in for the device (CPU kernel against CPU kernel)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def has_nvidia_gpu():
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0


@pytest.mark.skipif(has_nvidia_gpu(), reason="a GPU is here: the script would run the whole check")
def test_gpu_check_fails_fast_and_clearly_without_a_gpu(tmp_path):
    done = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, W=str(tmp_path / "w")))
    assert done.returncode != 0
    assert "no NVIDIA GPU here" in done.stdout and "make test" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["check", "bad-block"])
def test_cuda_driver_checks_itself_on_the_cpu(mode):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_driver.py"), "--device", "cpu",
                           "--mode", mode], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{mode}: 0 mismatches" in done.stdout
