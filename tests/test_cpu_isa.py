"""The CPU kernels built per instruction set (csrc/cpu/isa.h): the choice is reported and can be
forced down with WINNOW_CPU_CAPABILITY, and every set computes what the baseline computes —
bit for bit, except the transcendental functions of act_tangent (libm's on the baseline, ATen's
vectorised ones above it), which agree to float rounding."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import winnow
import winnow._C as C

HERE = Path(__file__).parent
ORDER = ["DEFAULT", "AVX2", "AVX512"]


def run_outputs(tmp_path, capability: str | None) -> dict:
    env = dict(os.environ)
    env.pop("WINNOW_CPU_CAPABILITY", None)
    if capability is not None:
        env["WINNOW_CPU_CAPABILITY"] = capability
    path = tmp_path / f"{capability}.pt"
    subprocess.run([sys.executable, str(HERE / "isa_outputs.py"), str(path)], env=env, check=True, timeout=600)
    return torch.load(path)


def test_the_build_reports_its_sets_and_the_active_one():
    built = winnow.build_info()["cpu_isas"].split()
    assert built[0] == "DEFAULT"
    if os.uname().machine in ("x86_64", "AMD64"):
        assert built == ORDER
    assert C.cpu_capability() in built


def test_a_bad_capability_names_the_variable():
    code = "import winnow._C as C; C.cpu_capability()"
    env = dict(os.environ, WINNOW_CPU_CAPABILITY="sse9")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "WINNOW_CPU_CAPABILITY" in r.stderr and "sse9" in r.stderr


def assert_same(a, b, key, exact):
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), key
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{key}[{i}]", exact)
        return
    if exact or not a.is_floating_point():
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), key
        return
    tol = {torch.float32: 2e-6, torch.float64: 1e-13}.get(a.dtype)
    if tol is None:  # bf16 / fp16: one unit in the last place of the dtype
        tol = torch.finfo(a.dtype).eps
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True, msg=key)


def test_every_set_computes_what_the_baseline_computes(tmp_path):
    best = C.cpu_capability()
    sets = ORDER[: ORDER.index(best) + 1] if best in ORDER else [best]
    if len(sets) < 2:
        pytest.skip(f"this CPU runs only the {best} kernels")
    base = run_outputs(tmp_path, "default")
    assert base.pop("capability") == "DEFAULT"
    for isa in sets[1:]:
        other = run_outputs(tmp_path, isa.lower())
        assert other.pop("capability") == isa
        assert base.keys() == other.keys()
        for key in base:
            assert_same(base[key], other[key], f"{isa} {key}", exact=not key.startswith("act-"))
