"""One window per labelled genome interval, for sequence classification (``dna_classify``).

``window: center`` (default) reads ``seq_len`` bases centred on the interval's midpoint (shifted to
stay inside the sequence, padded if the sequence is shorter): every example has the same length
and some flanking context. ``window: interval`` reads exactly the interval, padded and masked up to
``seq_len`` (a longer interval is an error). Training windows are reverse-complemented with
probability ``rc_prob``, decided by (seed, index) so a resumed run sees the same strands.

Batches: ``tokens`` and ``padding_mask`` ``(batch, seq)``, ``label`` ``(batch,)``, ``index`` ``(batch,)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from longseq.data import sources
from longseq.data.distributed import sharded_loader
from longseq.data.fasta import FastaReader, ensure_index, validate_fasta
from longseq.data.labelled_intervals import LabelledInterval, read_labelled_intervals
from longseq.data.tokenizer import PAD, VOCAB_SIZE, encode, reverse_complement
from longseq.errors import UserError

log = logging.getLogger(__name__)
WINDOWS = ("center", "interval")


def _unit(seed: int, index: int) -> float:
    return float(np.random.default_rng([seed, index]).random())


class IntervalWindows(Dataset):
    """The window of each labelled interval, with its class index."""

    def __init__(
        self,
        reader: FastaReader,
        intervals: list[LabelledInterval],
        class_index: dict[str, int],
        seq_len: int,
        window: str = "center",
        rc_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.reader = reader
        self.intervals = intervals
        self.class_index = class_index
        self.seq_len = seq_len
        self.window = window
        self.rc_prob = rc_prob
        self.seed = seed

    def __len__(self) -> int:
        return len(self.intervals)

    def span(self, index: int) -> tuple[str, int, int]:
        """(sequence, start, end) of the bases read for example ``index``."""
        iv = self.intervals[index]
        if self.window == "interval":
            return iv.name, iv.start, iv.end
        length = self.reader.lengths[iv.name]
        start = (iv.start + iv.end) // 2 - self.seq_len // 2
        start = max(0, min(start, length - self.seq_len))
        return iv.name, start, min(start + self.seq_len, length)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        name, start, end = self.span(index)
        real = encode(self.reader.fetch(name, start, end))
        if self.rc_prob > 0 and _unit(self.seed, index) < self.rc_prob:
            real = reverse_complement(real)
        tokens = torch.full((self.seq_len,), PAD, dtype=torch.long)
        tokens[: real.numel()] = real
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[: real.numel()] = True
        label = self.class_index[self.intervals[index].label]
        return {"tokens": tokens, "padding_mask": mask, "label": torch.tensor(label), "index": torch.tensor(index)}


class LabelledIntervalDataModule(pl.LightningDataModule):
    """Labelled intervals of ``fasta`` (or of the named ``source``) read from ``intervals`` (BED/TSV)."""

    def __init__(
        self,
        seq_len: int,
        intervals: str | None = None,
        fasta: str | None = None,
        source: str | None = None,
        classes: Sequence[str] | None = None,
        window: str = "center",
        data_dir: str = "data",
        index_cache_dir: str = "data/.index_cache",
        vocab_size: int = VOCAB_SIZE,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        rc_prob: float = 0.5,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(seq_len, int) or seq_len <= 0:
            raise UserError(f"data.seq_len must be a positive integer, got {seq_len!r}")
        if vocab_size != VOCAB_SIZE:
            raise UserError(f"data.vocab_size must be {VOCAB_SIZE} for the DNA tokeniser, got {vocab_size}")
        if intervals is None:
            raise UserError("no labels given: set data.intervals=/path/to/labels.tsv (chrom, start, end, label[, split])")
        if fasta is None and source is None:
            raise UserError("no genome given: set data.fasta=/path/to/genome.fa")
        if window not in WINDOWS:
            raise UserError(f"data.window must be one of {', '.join(WINDOWS)}, got {window!r}")
        if fasta is not None:
            validate_fasta(fasta)
        self.save_hyperparameters(logger=False)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.class_names: tuple[str, ...] = tuple(classes) if classes is not None else ()
        self.datasets: dict[str, IntervalWindows] = {}

    @property
    def fasta_path(self) -> Path:
        h = self.hparams
        return Path(h.fasta).expanduser() if h.fasta is not None else sources.fetch(h.source, h.data_dir)

    def prepare_data(self) -> None:
        ensure_index(self.fasta_path, self.hparams.index_cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        reader = FastaReader(ensure_index(self.fasta_path, h.index_cache_dir))
        intervals, self.class_names = read_labelled_intervals(
            h.intervals, reader.lengths, h.classes, h.val_fraction, h.test_fraction
        )
        if h.window == "interval":
            long = [iv for iv in intervals if iv.length > self.seq_len]
            if long:
                raise UserError(
                    f"{len(long)} intervals are longer than data.seq_len={self.seq_len} (first: line {long[0].line}, "
                    f"{long[0].length} bases); raise data.seq_len or use data.window=center"
                )
        index = {c: i for i, c in enumerate(self.class_names)}
        for split in ("train", "val", "test"):
            chosen = [iv for iv in intervals if iv.split == split]
            rc = h.rc_prob if split == "train" else 0.0
            self.datasets[split] = IntervalWindows(reader, chosen, index, self.seq_len, h.window, rc, h.seed)
        if len(self.datasets["train"]) == 0:
            raise UserError(f"{h.intervals} has no training intervals")
        log.info(
            "labelled intervals %s: classes %s; train=%d val=%d test=%d",
            h.intervals, list(self.class_names), *(len(self.datasets[s]) for s in ("train", "val", "test")),
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def label_counts(self, split: str = "train") -> np.ndarray:
        """Examples per class in ``split`` (class index order)."""
        ds = self.datasets[split]
        labels = [ds.class_index[iv.label] for iv in ds.intervals]
        return np.bincount(np.asarray(labels, dtype=np.int64), minlength=self.num_classes)

    def _loader(self, split: str, batch_size: int, drop_last: bool) -> DataLoader:
        return sharded_loader(
            self.datasets[split],
            split,
            batch_size=batch_size,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.hparams.pin_memory,
            seed=self.hparams.seed,
            trainer=self.trainer,
            stateful=False,
        )

    def train_dataloader(self) -> DataLoader:
        # drop_last only when a full batch remains: a small training set still trains.
        drop = len(self.datasets["train"]) > self.batch_size
        return self._loader("train", batch_size=self.batch_size, drop_last=drop)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.eval_batch_size, drop_last=False)
