"""Shared benchmark machinery: timing, the machine's copy bandwidth, tables and JSON results.

Contenders are always timed side by side in one process, interleaved round by round, so that
the noise of a shared machine hits all of them alike; ratios come from the same run.
"""
import contextlib
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from winnow.report import format_table  # noqa: F401  (the benchmarks' table)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 3,
                     rounds: int = 15) -> dict[str, list[float]]:
    """Seconds per call of each fn, one sample per round; each round calls every fn once, in an
    order shuffled anew each round (seeded): a contender's time depends on what ran just before
    it (the caches and TLB it left, the memory it freed), and a fixed order would hand every
    contender the same neighbour in every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = random.Random(0)
    names = list(fns)
    for _ in range(rounds):
        order.shuffle(names)
        for name in names:
            fn = fns[name]
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - t0)
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def paired_speedup(baseline: list[float], contender: list[float]) -> float:
    """Median over rounds of baseline/contender: both were timed in the same round, so a slow
    phase of a shared machine cancels out of each ratio."""
    return statistics.median(b / c for b, c in zip(baseline, contender))


def copy_bandwidth(device: torch.device, nbytes: int = 512 << 20, rounds: int = 15) -> float:
    """The machine's achievable bandwidth in GB/s: bytes read + written by a large tensor copy."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = median(time_interleaved({"copy": lambda: dst.copy_(src)}, device, warmup=2, rounds=rounds)["copy"])
    return 2 * nbytes / t / 1e9


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} {platform.machine()}"
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the instruction set winnow's CPU kernels run (their
    timings depend on it: AVX-512 and AVX2 machines differ)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import winnow._C

    isa = winnow._C.cpu_capability().upper()
    return f"{cpu_model()} ({torch.get_num_threads()} threads, winnow kernels {isa})"


def environment(device: torch.device) -> dict:
    import winnow

    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "winnow_build": winnow.build_info(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def device_tag(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + torch.cuda.get_device_name(device).replace(" ", "_")
    return "cpu"


def read_results(device: torch.device, names) -> dict[str, dict]:
    """{name: the stored result} for each benchmark that has a results/<name>-<device>.json."""
    out = {}
    for name in names:
        path = RESULTS_DIR / f"{name}-{device_tag(device)}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def write_result(name: str, device: torch.device, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{device_tag(device)}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(device), **payload}, indent=2))
    return path
