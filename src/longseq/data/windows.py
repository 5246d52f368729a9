"""Map-style datasets of fixed-length DNA windows cut from genome intervals.

Training windows start anywhere inside the training intervals: index ``i`` of the dataset *is* the
``i``-th valid start position, so the sampler (shuffled, or Lightning's DistributedSampler under
DDP) decides the order and every rank sees a disjoint, seeded share; a window's content (strand
included) depends only on its index, so a stateful loader can resume mid-epoch exactly. Evaluation windows tile their
intervals with a fixed stride; the last, shorter window of an interval is padded (PAD tokens and a
False padding mask) so that every base is scored and none twice. Windows that are mostly N are
skipped (training: deterministically replaced by another start; evaluation: left out at set-up).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from longseq.data.fasta import FastaReader
from longseq.data.intervals import Interval
from longseq.data.tokenizer import PAD, N, encode, reverse_complement

# Multiplier of a multiplicative hash (Knuth) to jump to a far-away start when a window is mostly N.
_PROBE_STEP = 2654435761
_MAX_PROBES = 64


def _unit_hash(seed: int, index: int) -> float:
    """A deterministic number in [0, 1) from (seed, index) (SplitMix64 finaliser)."""
    x = (index * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9 + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return ((x ^ (x >> 31)) >> 11) / float(1 << 53)


def n_fraction(tokens: torch.Tensor) -> float:
    return float((tokens == N).float().mean()) if tokens.numel() else 1.0


class TrainWindows(Dataset):
    """Every start position of a ``seq_len`` window inside the training intervals, as one index."""

    def __init__(
        self,
        reader: FastaReader,
        intervals: list[Interval],
        seq_len: int,
        max_n_fraction: float = 0.5,
        rc_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.reader = reader
        self.seq_len = seq_len
        self.max_n_fraction = max_n_fraction
        self.rc_prob = rc_prob
        self.seed = seed
        self.intervals = [iv for iv in intervals if iv.length >= seq_len]
        counts = np.array([iv.length - seq_len + 1 for iv in self.intervals], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[str, int]:
        """(sequence name, start) of window ``index``."""
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        iv = self.intervals[k]
        return iv.name, iv.start + int(index - self._offsets[k])

    def draw(self, index: int) -> tuple[str, int, torch.Tensor]:
        """(sequence name, start, tokens) of window ``index``, or of the first window reached from it by
        deterministic jumps whose N fraction is at most ``max_n_fraction``."""
        probe = index
        for _ in range(_MAX_PROBES):
            name, start = self.locate(probe)
            tokens = encode(self.reader.fetch(name, start, start + self.seq_len))
            if n_fraction(tokens) <= self.max_n_fraction:
                return name, start, tokens
            probe = (probe * _PROBE_STEP + 1) % len(self)  # deterministic jump elsewhere
        raise RuntimeError(
            f"could not find a training window with at most {self.max_n_fraction:.0%} N after "
            f"{_MAX_PROBES} tries; raise data.max_n_fraction or check the FASTA"
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        _, _, tokens = self.draw(index)
        # The strand is a function of (seed, index), not of a worker's RNG state: the same window gets
        # the same strand whatever the worker, rank or resume point.
        if self.rc_prob > 0 and _unit_hash(self.seed, index) < self.rc_prob:
            tokens = reverse_complement(tokens)
        return {
            "tokens": tokens,
            "padding_mask": torch.ones(self.seq_len, dtype=torch.bool),
            "index": torch.tensor(index),
        }


class EvalWindows(Dataset):
    """Windows tiling the evaluation intervals with ``stride`` (default: no overlap)."""

    def __init__(
        self,
        reader: FastaReader,
        intervals: list[Interval],
        seq_len: int,
        stride: int | None = None,
        max_n_fraction: float = 0.5,
        min_tail: int = 1,
    ) -> None:
        self.reader = reader
        self.seq_len = seq_len
        stride = stride or seq_len
        self.windows: list[tuple[str, int, int]] = []
        for iv in intervals:
            for start in range(iv.start, iv.end, stride):
                end = min(start + seq_len, iv.end)
                if end - start < min_tail:
                    continue
                tokens = encode(reader.fetch(iv.name, start, end))
                if n_fraction(tokens) <= max_n_fraction:
                    self.windows.append((iv.name, start, end))
                if end == iv.end:
                    break

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        name, start, end = self.windows[index]
        real = encode(self.reader.fetch(name, start, end))
        tokens = torch.full((self.seq_len,), PAD, dtype=torch.long)
        tokens[: real.numel()] = real
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[: real.numel()] = True
        return {"tokens": tokens, "padding_mask": mask, "index": torch.tensor(index)}


def count_bases(reader: FastaReader, intervals: list[Interval], max_bases: int = 20_000_000) -> np.ndarray:
    """Counts of A, C, G, T over the intervals (evenly subsampled to at most ``max_bases``)."""
    counts = np.zeros(5, dtype=np.int64)
    total = sum(iv.length for iv in intervals)
    chunk = 1_000_000
    keep_every = max(1, int(np.ceil(total / max_bases)))
    k = 0
    for iv in intervals:
        for start in range(iv.start, iv.end, chunk):
            if k % keep_every == 0:
                tokens = encode(reader.fetch(iv.name, start, min(start + chunk, iv.end)))
                counts += np.bincount(tokens.numpy(), minlength=5)[:5]
            k += 1
    return counts[:4]
