"""The floor of a random-block masked AdamW step on this machine, next to MaskedAdamW's time.

A minimal kernel (benchmarks/floors/random_blocks.cpp, compiled here with the machine's C++
compiler at -O3 -march=native, loaded with ctypes) updates the same random blocks of the same
parameters as MaskedAdamW, with its block update and prefetching (winnow/masked_adamw_cpu_loop.h)
and nothing else: no checks, no dispatch, one loop. Both are timed side by side with torch's AdamW(fused=True).
Where the minimal kernel's time vs fused is above a target, no kernel of this memory layout
reaches that target on this machine: the time is the memory system's (TLB walks and the lines
the hardware fetches around each block), not code. CPU only.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import torch
from torch.utils import cpp_extension

from benchmarks import harness
from benchmarks.masked_adamw import _mask, _params
from winnow.optim import MaskedAdamW

SOURCE = Path(__file__).resolve().parent / "floors" / "random_blocks.cpp"
BUILD_DIR = Path(__file__).resolve().parents[1] / "build" / "bench-floors"
INCLUDE_DIR = Path(__file__).resolve().parents[1] / "csrc" / "include"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-shared", "-fPIC", "-std=c++20"]
HYPER = dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)


def _library() -> ctypes.CDLL:
    """The floor kernel, compiled once per source and flags (build/bench-floors/)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("random_block_floor needs a C++ compiler (set CXX)")
    # winnow's per-element AdamW header, whose host-side half includes ATen's
    includes = [f"-I{INCLUDE_DIR}", *(f"-isystem{d}" for d in cpp_extension.include_paths()),
                f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    headers = b"".join((INCLUDE_DIR / "winnow" / name).read_bytes()
                       for name in ("masked_adamw_step.h", "masked_adamw_cpu_loop.h"))
    digest = hashlib.sha256(SOURCE.read_bytes() + headers + " ".join([compiler, *FLAGS, *includes]).encode())
    lib = BUILD_DIR / f"random_blocks-{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([compiler, *FLAGS, *includes, str(SOURCE), "-o", str(tmp)], check=True)
        tmp.replace(lib)
    return ctypes.CDLL(str(lib))


class FloorStep:
    """One call of the minimal kernel over `params`' active `blocks` (lists of block indices)."""

    def __init__(self, lib: ctypes.CDLL, params: list, blocks: list, block_size: int):
        n = len(params)
        if any(p.dtype != torch.float32 or p.numel() % block_size for p in params):
            raise ValueError(f"the floor kernel takes float32 params of whole blocks of {block_size} elements")
        self.params = params  # the kernel gets raw pointers: these keep params and grads alive
        self.moments = [torch.zeros(b.numel() * block_size) for b in blocks for _ in range(2)]
        self.blocks = [b.contiguous() for b in blocks]

        def pointers(ts, kind):
            return (kind * n)(*[ctypes.cast(t.data_ptr(), kind) for t in ts])

        f32, i64 = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int64)
        self.args = (ctypes.c_int(n), pointers([p.detach() for p in params], f32),
                     pointers([p.grad for p in params], f32),
                     pointers(self.moments[0::2], f32), pointers(self.moments[1::2], f32), pointers(self.blocks, i64),
                     (ctypes.c_int64 * n)(*[b.numel() for b in self.blocks]), ctypes.c_int64(block_size),
                     ctypes.c_int(torch.get_num_threads()))
        beta1, beta2 = HYPER["betas"]
        self.hyper = [ctypes.c_double(x) for x in (HYPER["lr"], beta1, beta2, HYPER["weight_decay"], HYPER["eps"])]
        self.fn = lib.floor_step
        self.steps = 0

    def __call__(self):
        self.steps += 1
        self.fn(*self.args, *self.hyper, ctypes.c_int(self.steps))


def _active_blocks(opt: MaskedAdamW, params: list) -> list:
    return [opt.state[p]["active_blocks"] for p in params]


def _check(lib: ctypes.CDLL, block_size: int) -> None:
    """The floor kernel's first step equals MaskedAdamW's on the same blocks (else its time means
    nothing): 3 tensors of awkward lengths, random blocks."""
    gen = torch.Generator().manual_seed(7)
    ps = [torch.randn(block_size * n, generator=gen).requires_grad_() for n in (1, 37, 500)]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen)
    ref = [p.detach().clone().requires_grad_() for p in ps]
    for r, p in zip(ref, ps):
        r.grad = p.grad.clone()
    opt = MaskedAdamW(ref, block_size=block_size, **HYPER)
    for r in ref:
        mask = torch.rand(opt.num_blocks(r), generator=gen) < 0.4
        mask[0] = True
        opt.set_mask(r, mask)
    opt.step()
    FloorStep(lib, ps, _active_blocks(opt, ref), block_size)()
    for r, p in zip(ref, ps):
        assert torch.equal(p.detach(), r.detach()), "the floor kernel does not compute MaskedAdamW's update"


def run(device: torch.device, num_tensors: int = 16, total_elements: int = 16 << 20, block_sizes=(64, 256),
        densities=(1.0, 0.5, 0.1, 0.01), rounds: int = 15) -> dict:
    if device.type != "cpu":
        raise ValueError(f"random_block_floor runs on CPU only, got device {device}")
    lib = _library()
    for bs in block_sizes:
        _check(lib, bs)
    per = total_elements // num_tensors
    steps = {"torch AdamW fused": torch.optim.AdamW(_params(device, num_tensors, per), lr=HYPER["lr"],
                                                    fused=True).step}
    cases = {"torch AdamW fused": (None, 1.0)}
    for bs in block_sizes:
        for d in densities:
            label = f"bs {bs} density {d:g}" + (" random" if d < 1.0 else "")
            for kind in ("winnow MaskedAdamW", "floor kernel"):
                ps = _params(device, num_tensors, per)
                opt = MaskedAdamW(ps, block_size=bs, **HYPER)
                if d < 1.0:
                    gen = torch.Generator().manual_seed(1)  # the masked_adamw benchmark's masks
                    for p in ps:
                        opt.set_mask(p, _mask(opt.num_blocks(p), d, "random", gen))
                if kind == "winnow MaskedAdamW":
                    steps[f"{kind} {label}"] = opt.step
                else:
                    opt.step()  # builds the block lists; the floor kernel gets its own moments
                    steps[f"{kind} {label}"] = FloorStep(lib, ps, _active_blocks(opt, ps), bs)
                cases[f"{kind} {label}"] = (bs, d)
    samples = harness.time_interleaved(steps, device, rounds=rounds)
    base = samples["torch AdamW fused"]
    rows = [{"contender": name, "block size": cases[name][0] or "-", "density": cases[name][1],
             "ms": harness.median(t) * 1e3, "time vs fused": 1 / harness.paired_speedup(base, t)}
            for name, t in samples.items()]
    header = (f"random-block floor: {num_tensors} tensors x {per} float32 params, block sizes "
              f"{'/'.join(map(str, block_sizes))}, random active blocks (the masked_adamw benchmark's), on "
              f"{harness.device_name(device)}\nfloor kernel: {SOURCE.name} at {' '.join(FLAGS[:2])}; "
              f"'time vs fused' paired per round")
    cols = ["contender", "block size", "density", "ms", "time vs fused"]
    return {"header": header, "table": harness.format_table(rows, cols), "rows": rows}
