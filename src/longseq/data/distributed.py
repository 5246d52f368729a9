"""Which windows each process reads under DDP and sequence parallelism, resumable mid-epoch.

One global order per epoch: a permutation of the dataset's indices seeded by (seed, epoch) (or the
identity for evaluation). Of ``W`` data-parallel ranks, rank ``r`` reads positions ``c + r, c + r + W,
c + r + 2W, ...`` of that order, where ``c`` is how many positions were consumed before (0 at an
epoch's start). So:

- the ranks' shares are disjoint, and at every step their union is exactly the batch a single
  process with a ``W``-times larger batch would read (the same windows, whatever ``W``);
- DataLoader workers receive whole batches round-robin from this sampler in the main process, so
  each (rank, worker) pair reads a disjoint, deterministic share too;
- the position is one number, ``consumed`` (positions taken by all ranks together), plus the epoch:
  the same on every rank, so the one loader state Lightning keeps in a checkpoint (rank 0's)
  restores every rank, also with a different number of ranks.

Sequence parallelism: the ranks of one group read the same windows (they share a data-parallel
rank) and each keeps its shard of every window (:class:`SequenceShard`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader


def process_position(trainer: Any = None, sequence_parallel: int = 1) -> tuple[int, int, int, int]:
    """``(data-parallel rank, data-parallel world, rank in the SP group, SP group size)`` of this process.

    From the Lightning ``trainer`` when one is attached, else from an initialised
    ``torch.distributed``, else a single process. Groups are consecutive ranks (as
    :func:`longseq.attention.sequence_parallel.new_groups` builds them).
    """
    if trainer is not None:
        rank, world = int(trainer.global_rank), int(trainer.world_size)
    elif dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    sp = max(1, int(sequence_parallel))
    if world % sp:
        raise ValueError(f"sequence_parallel={sp} does not divide the world size {world}")
    return rank // sp, world // sp, rank % sp, sp


def epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"windows:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ShardedSampler(Sampler[int]):
    """This rank's share of a seeded global order of ``num_samples`` indices (see module docstring).

    ``drop_last``: every rank gets the same number of indices (the global order's tail that would
    leave ranks unequal is dropped: training, where ranks step in lockstep). Without it (evaluation)
    every index is read exactly once and ranks may differ by one; only when there are fewer indices
    than ranks does a rank that would get none re-read one, because every rank must take part in the
    metrics' epoch-end synchronisation (Lightning skips validation on a rank with no batch).
    """

    def __init__(
        self, num_samples: int, rank: int = 0, world: int = 1, shuffle: bool = True, seed: int = 0, drop_last: bool = True
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        self.num_samples = num_samples
        self.rank, self.world = rank, world
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start: the next iterator uses that epoch's order."""
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The global order of ``epoch`` (all ranks together)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))

    def positions(self, consumed: int) -> range:
        """This rank's positions in the global order, after ``consumed`` positions were taken."""
        remaining = max(0, self.num_samples - consumed)
        stop = consumed + (remaining // self.world) * self.world if self.drop_last else self.num_samples
        mine = range(consumed + self.rank, stop, self.world)
        if not self.drop_last and len(mine) == 0 and self.num_samples > 0:
            return range(self.rank % self.num_samples, self.rank % self.num_samples + 1)
        return mine

    def __len__(self) -> int:
        return len(self.positions(0))

    def __iter__(self) -> Iterator[int]:
        return _ShardedIterator(self, self.epoch, 0)


class _ShardedIterator(Iterator[int]):
    """Iterator with ``state_dict``/``load_state_dict`` (torchdata's StatefulDataLoader keeps it)."""

    def __init__(self, sampler: ShardedSampler, epoch: int, consumed: int) -> None:
        self.sampler = sampler
        self._start(epoch, consumed)

    def _start(self, epoch: int, consumed: int) -> None:
        self.epoch, self.consumed0 = epoch, consumed
        self.order = self.sampler.order(epoch)
        self.positions = self.sampler.positions(consumed)
        self.yielded = 0

    def __iter__(self) -> _ShardedIterator:
        return self

    def __next__(self) -> int:
        if self.yielded >= len(self.positions):
            raise StopIteration
        index = int(self.order[self.positions[self.yielded]])
        self.yielded += 1
        return index

    def state_dict(self) -> dict[str, int]:
        # Positions taken by ALL ranks: ranks advance in lockstep, so rank r's yielded count times
        # the world size is the global position, the same on every rank.
        return {"epoch": self.epoch, "consumed": self.consumed0 + self.yielded * self.sampler.world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start(int(state["epoch"]), int(state["consumed"]))


class SequenceShard(Dataset):
    """``dataset``'s items cut to shard ``index`` of ``count`` along the sequence: every tensor whose
    first dimension is ``seq_len`` keeps its ``[index·seq_len/count, (index+1)·seq_len/count)`` slice."""

    def __init__(self, dataset: Dataset, index: int, count: int, seq_len: int) -> None:
        if seq_len % count:
            raise ValueError(f"seq_len={seq_len} does not split into {count} shards")
        self.dataset, self.index, self.count, self.seq_len = dataset, index, count, seq_len
        self.step = seq_len // count

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        return {
            k: v.narrow(0, self.index * self.step, self.step).clone()
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == self.seq_len
            else v
            for k, v in item.items()
        }


def sharded_loader(
    dataset: Dataset,
    split: str,
    *,
    batch_size: int,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
    seed: int,
    trainer: Any,
    stateful: bool = True,
    seq_len: int | None = None,
    sequence_parallel: int = 1,
) -> DataLoader:
    """The loader of ``split`` for this process: its SP shard of every window, its data-parallel share.

    Training (``split == "train"``) reads a (seed, epoch)-shuffled order in which every rank gets
    as many windows; with ``stateful`` its loader is torchdata's StatefulDataLoader, whose position
    Lightning stores in every checkpoint, so ``ckpt_path=last.ckpt`` continues mid-epoch without
    repeating or skipping windows. Evaluation reads every window once, in order. ``drop_last`` is the
    loader's (a short last batch); the sampler's equal shares are fixed by the split.
    """
    train = split == "train"
    dp_rank, dp_world, sp_rank, sp_size = process_position(trainer, sequence_parallel)
    if sp_size > 1:
        if seq_len is None:
            raise ValueError("sequence parallelism needs the windows' seq_len")
        dataset = SequenceShard(dataset, sp_rank, sp_size, seq_len)
    sampler = ShardedSampler(len(dataset), dp_rank, dp_world, train, seed, train)  # type: ignore[arg-type]
    loader_cls = StatefulDataLoader if train and stateful else DataLoader
    return loader_cls(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
