"""DDP data streams: disjoint per-rank shares whose union is the single-process stream, resumable.

The sampler is checked directly for several world sizes; then 2 gloo processes read the real FASTA
data module (with a worker) and compare with one process reading the same global batches, and the
sequence-parallel hand-off is checked (both ranks of a group get the same windows, each its shard).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from distributed import run_ranks

from longseq.data.distributed import SequenceShard, ShardedSampler
from longseq.data.fasta_datamodule import FastaDataModule


def take(it, k: int) -> list[int]:
    return [next(it) for _ in range(k)]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_rank_shares_are_disjoint_and_their_union_is_the_single_process_order(world, shuffle):
    n, b = 103, 4
    single = list(iter(ShardedSampler(n, 0, 1, shuffle, seed=7)))
    assert sorted(single) == list(range(n))
    shares = [list(iter(ShardedSampler(n, r, world, shuffle, seed=7))) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # lockstep: the same count on every rank
    flat = [i for s in shares for i in s]
    assert len(flat) == len(set(flat))  # disjoint
    # Step by step: rank r's k-th batch of b, over all ranks, is the single process's batch of b·world.
    for step in range(len(shares[0]) // b):
        union = sorted(i for s in shares for i in s[step * b : (step + 1) * b])
        assert union == sorted(single[step * b * world : (step + 1) * b * world])


def test_epochs_differ_and_repeat_with_the_seed():
    s = ShardedSampler(50, 0, 1, True, seed=3)
    first = list(iter(s))
    s.set_epoch(1)
    second = list(iter(s))
    assert first != second and sorted(first) == sorted(second)
    s2 = ShardedSampler(50, 0, 1, True, seed=3)
    s2.set_epoch(1)
    assert list(iter(s2)) == second


def test_eval_order_reads_every_index_once_over_uneven_ranks():
    shares = [list(iter(ShardedSampler(10, r, 3, shuffle=False, drop_last=False))) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(10))
    # Fewer windows than ranks: no rank is left without one (it would miss the metrics' sync).
    shares = [list(iter(ShardedSampler(2, r, 3, shuffle=False, drop_last=False))) for r in range(3)]
    assert shares == [[0], [1], [0]]


@pytest.mark.parametrize("new_world", [2, 4])
def test_resume_continues_the_global_order_also_on_another_world_size(new_world):
    n, world = 64, 2
    its = [iter(ShardedSampler(n, r, world, True, seed=1)) for r in range(world)]
    seen = [i for it in its for i in take(it, 6)]
    state = its[0].state_dict()  # rank 0's state (what Lightning checkpoints) restores every rank
    assert state == its[1].state_dict() == {"epoch": 0, "consumed": 12}
    rest = []
    for r in range(new_world):
        it = iter(ShardedSampler(n, r, new_world, True, seed=1))
        it.load_state_dict(state)
        rest += list(it)
    single = list(iter(ShardedSampler(n, 0, 1, True, seed=1)))
    assert sorted(seen + rest) == sorted(single) and len(seen + rest) == n  # nothing repeated or skipped
    assert sorted(rest) == sorted(single[12:])


def make_dm(fasta: Path, cache: Path, **kw) -> FastaDataModule:
    dm = FastaDataModule(seq_len=64, fasta=str(fasta), index_cache_dir=str(cache), batch_size=3, seed=5, **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def _batches(loader, k: int) -> list[dict[str, torch.Tensor]]:
    it = iter(loader)
    return [next(it) for _ in range(k)]


def _data_worker(rank: int, world: int, fasta: str, cache: str) -> None:
    # One process reading batches of 6 is the reference; here each rank reads 3 (with a worker).
    dm = make_dm(Path(fasta), Path(cache), num_workers=1)
    ref = make_dm(Path(fasta), Path(cache), num_workers=0)
    ref.batch_size = 3 * world
    with _single_process():
        ref_batches = _batches(ref.train_dataloader(), 4)
    mine = _batches(dm.train_dataloader(), 4)  # through a worker process: (rank, worker) shares
    dm.num_workers = 0  # the rest in-process (each worker start and shutdown costs seconds)
    for got, want in zip(mine, ref_batches, strict=True):
        parts = [torch.empty_like(got["index"]) for _ in range(world)]
        dist.all_gather(parts, got["index"])
        assert sorted(torch.cat(parts).tolist()) == sorted(want["index"].tolist())
        assert len(set(torch.cat(parts).tolist())) == len(torch.cat(parts))  # disjoint across ranks
        row = {int(i): t for i, t in zip(want["index"], want["tokens"], strict=True)}
        for i, t in zip(got["index"], got["tokens"], strict=True):
            assert torch.equal(t, row[int(i)])  # same window, same strand

    # Mid-epoch resume: the loader state after 2 batches continues with batches 3 and 4.
    fresh = dm.train_dataloader()
    it = iter(fresh)
    next(it), next(it)
    state = fresh.state_dict()
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    again = _batches(resumed, 2)
    for a, b in zip(again, mine[2:], strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["tokens"], b["tokens"])

    # Sequence parallelism over both ranks: the same windows, each rank its half of every window.
    dm.sequence_parallel = world
    shard = _batches(dm.train_dataloader(), 2)
    ref.batch_size = 3
    with _single_process():
        whole = _batches(ref.train_dataloader(), 2)
    for got, want in zip(shard, whole, strict=True):
        assert torch.equal(got["index"], want["index"])
        parts = [torch.empty_like(got["tokens"]) for _ in range(world)]
        dist.all_gather(parts, got["tokens"].contiguous())
        assert torch.equal(torch.cat(parts, dim=1), want["tokens"])
    val = next(iter(dm.val_dataloader()))
    assert val["tokens"].shape[1] == 64 // world


class _single_process:
    """Read a loader as a single process would, while torch.distributed is initialised."""

    def __enter__(self):
        self._saved = dist.is_initialized
        dist.is_initialized = lambda: False

    def __exit__(self, *exc):
        dist.is_initialized = self._saved


def test_two_ranks_read_disjoint_windows_that_make_up_the_single_process_batches(tiny_fasta, tmp_path):
    run_ranks(_data_worker, 2, tmp_path, str(tiny_fasta), str(tmp_path / "cache"))


def test_sequence_shard_cuts_every_per_position_tensor():
    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"tokens": torch.arange(8) + i, "padding_mask": torch.ones(8, dtype=torch.bool), "index": torch.tensor(i)}

    shard = SequenceShard(Windows(), 1, 2, 8)
    item = shard[1]
    assert item["tokens"].tolist() == [5, 6, 7, 8] and item["padding_mask"].shape == (4,) and item["index"] == 1
