"""Run a function on N gloo ranks (separate CPU processes) and collect what each returns."""
import gc
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tear_down_group() -> None:
    """Destroys the process group once every rank is done with it. The collection first: a model
    or optimizer left in a reference cycle holds the group, and freed at interpreter exit it takes
    gloo's threads down with it (SIGABRT, "terminate called without an active exception"); the
    barrier keeps a rank (rank 0 serves the store) from leaving while the other still talks to it."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.save(fn(rank, world, *args), Path(out_dir) / f"rank{rank}.pt")
    tear_down_group()  # on an exception the process ends and mp.spawn stops the others


def run_ranks(fn, out_dir, *args, world: int = 2) -> list:
    """fn(rank, world, *args) on `world` processes; returns their results in rank order. fn must
    be importable (a module-level function) and return something torch.save can write."""
    mp.spawn(_entry, args=(world, _free_port(), str(out_dir), fn, args), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
