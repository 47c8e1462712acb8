"""Peak memory of a block of code: the rise of the process's resident set above where it stood on
entry, sampled by a background thread, or (`allocated=True`) the peak of live tensor bytes.

CPU tensors have no allocator statistics, so RSS is what there is. Two things make it track live
tensor bytes: inside the block glibc's mmap threshold is pinned at 1 MiB (blocks above it are
mmapped and go back to the OS on free; glibc's default lets the threshold grow to 32 MiB, after
which freed tensors linger in the heap and RSS overstates by ~70% in our measurements), and the
heap is trimmed on entry. The pinned threshold costs page faults: training steps run ~1.5x slower
inside the block, so measure a few steps, not a whole run. On exit the threshold goes to 32 MiB,
where glibc's default would have grown it. CUDA blocks use torch.cuda's own peak counter instead.
"""
import ctypes
import os
import threading
import time

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.mallopt, _libc.malloc_trim  # noqa: B018  (both exist: this is glibc)
        except (OSError, AttributeError):
            _libc = False  # not glibc: RSS is still sampled, just less tightly
    return _libc


def _pin_mmap_threshold(nbytes: int) -> None:
    libc = _glibc()
    if libc:
        libc.mallopt(_M_MMAP_THRESHOLD, nbytes)
        libc.mallopt(_M_TRIM_THRESHOLD, nbytes)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakMemory:
    """`with PeakMemory(device) as pm: ...`, then `pm.peak_bytes`: the most memory in use above
    the level on entry (host RSS sampled every `interval` s, or torch.cuda's peak allocated).

    `allocated=True` on the CPU: instead of RSS, the peak of tensor bytes allocated inside the
    block and not yet freed, the host's analogue of torch.cuda.max_memory_allocated (a GPU
    user's peak), from torch.profiler's allocation and free events summed in time order. The
    allocator's overhead, the heap's fragmentation and non-tensor memory are not in it, and
    neither are frees of tensors older than the block (the profiler never saw their size): enter
    it before the memory to be measured exists. The profiler slows the block a little."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 2e-4, allocated: bool = False):
        self.device = torch.device(device)
        self.interval = interval
        self.allocated = allocated
        self.peak_bytes = 0

    def __enter__(self):
        if self.device.type == "cpu" and self.allocated:
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                    profile_memory=True)
            self._profiler.__enter__()
            return self
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _pin_mmap_threshold(1 << 20)
        if _glibc():
            _glibc().malloc_trim(0)
        self._base = self._max = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return False
        if self.allocated:
            self._profiler.__exit__(*exc)
            self.peak_bytes = _allocated_peak(self._profiler)
            return False
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self._max, rss_bytes()) - self._base
        _pin_mmap_threshold(32 << 20)
        return False


def _allocated_peak(prof) -> int:
    """The largest running sum of a profile's CPU allocation (+) and free (-) events: the peak
    rise of live tensor bytes over the level where the profile began."""
    events = prof.profiler.kineto_results.events()
    changes = sorted((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak


class TrainingMemory:
    """Exact accounting of what a training step holds beyond the weights: the activations saved
    for backward (distinct storages, parameters excluded), the gradients and the optimizer state.
    Deterministic and cheap, so it can watch every step of a run; `peak_bytes` is the largest
    step total seen. Transient buffers inside forward/backward are not counted (PeakMemory
    measures those, at a cost).

    Per step: `with tm.forward(): loss = model(batch)`, then backward and optimizer.step(), then
    `tm.end_step()` before zero_grad()."""

    def __init__(self, model: torch.nn.Module, optimizers):
        self.model = model
        self.optimizers = list(optimizers)
        self.peak_bytes = 0
        self._saved: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        self._saved[st.data_ptr()] = st.nbytes()
        return t

    def forward(self):
        self._saved = {}
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    @staticmethod
    def _state_bytes(opt) -> int:
        if hasattr(opt, "state_bytes"):
            return opt.state_bytes()
        return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))

    def end_step(self) -> int:
        params = list(self.model.parameters())
        weights = {p.untyped_storage().data_ptr() for p in params}
        saved = sum(n for ptr, n in self._saved.items() if ptr not in weights)
        grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        total = saved + grads + sum(self._state_bytes(o) for o in self.optimizers)
        self.peak_bytes = max(self.peak_bytes, total)
        return total
