"""Run a function in N gloo processes on CPU (rendezvous through a file: no ports, safe under xdist)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable[..., Any], world: int, store: str, args: tuple) -> None:
    torch.set_num_threads(1)
    mp.set_start_method("fork", force=True)  # DataLoader workers: fork (a spawned worker re-imports torch)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int, tmp_path: Path, *args: Any) -> None:
    """``fn(rank, world, *args)`` in ``world`` spawned processes; an exception in any fails the caller.

    ``fn`` must be a module-level function (spawn pickles it by name).
    """
    store = tmp_path / f"rendezvous-{os.getpid()}"
    mp.spawn(_entry, args=(fn, world, str(store), args), nprocs=world, join=True)


class SaveRankState:
    """A Lightning callback (used through ``+callbacks.<name>._target_=distributed.SaveRankState``
    with ``tests/`` on PYTHONPATH) that saves every rank's parameters and buffers when fitting ends."""

    def __new__(cls, path: str):
        import pytorch_lightning as pl

        class _Save(pl.Callback):
            def on_train_end(self, trainer, pl_module) -> None:
                state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
                torch.save(state, f"{path}.rank{trainer.global_rank}.pt")

        return _Save()
