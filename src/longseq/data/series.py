"""Random access to long multichannel recordings without loading them into memory.

A recording file becomes a :class:`SeriesArray`: a ``(samples, columns)`` array that is a NumPy
memory map, so a window is a slice read from disk. ``.npy`` files are mapped directly. Text
(``.csv``, ``.tsv``, ``.txt``) and Parquet files cannot be sliced at a sample offset, so they are
streamed once, block by block (bounded memory, whatever the file size), into a float32 cache file
in ``cache_dir`` and mapped from there; nothing is ever written beside the user's file, and the
cache is rebuilt when the file's size or modification time changes.

Also here: the non-finite scan (for the ``refuse`` policy), the per-window fills (``interpolate``)
and per-channel statistics computed in chunks over chosen sample ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from longseq.errors import UserError

FORMATS = {".npy": "npy", ".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_DELIMITERS = {"csv": ",", "tsv": "\t"}
_CHUNK = 1 << 20  # samples per chunk when scanning or converting


@dataclass
class SeriesArray:
    """A recording file as a ``(samples, columns)`` array (memory-mapped) with column names.

    ``mapped`` is the file actually mapped (the ``.npy`` itself, or the float32 cache of a text or
    Parquet file). Pickling (DataLoader workers under the ``spawn`` start method) sends only these
    names and the worker maps the file again, instead of copying the whole array.
    """

    path: Path
    data: np.ndarray
    columns: list[str]
    mapped: Path | None = None

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.mapped is not None:
            state["data"] = (tuple(self.data.shape), self.data.dtype.str)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("mapped") is not None:
            shape, dtype = state["data"]
            mapped = state["mapped"]
            if mapped.suffix == ".npy":
                data = np.load(mapped, mmap_mode="r", allow_pickle=False)
                state["data"] = data.reshape(shape)
            else:
                state["data"] = _map_raw(mapped, shape[0], shape[1]) if shape[0] else np.zeros(shape, dtype)
        self.__dict__.update(state)

    def column_indices(self, spec: Sequence[str | int] | None, key: str = "data.channels") -> list[int]:
        """Indices of the columns named (or numbered) in ``spec``; ``None`` means every column."""
        if spec is None:
            return list(range(len(self.columns)))
        out = []
        for item in spec:
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= int(item) < len(self.columns):
                    raise UserError(
                        f"{key} asks for column {item} but {self.path} has {len(self.columns)} columns "
                        f"(0..{len(self.columns) - 1}: {', '.join(self.columns)})"
                    )
                out.append(int(item))
            elif str(item) in self.columns:
                out.append(self.columns.index(str(item)))
            else:
                raise UserError(
                    f"{key} names column {item!r}, which {self.path} does not have "
                    f"(columns: {', '.join(self.columns)}); use a name from that list or a 0-based index"
                )
        return out


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        if fmt not in set(FORMATS.values()):
            raise UserError(f"unknown series format {fmt!r}: choose auto, {', '.join(sorted(set(FORMATS.values())))}")
        return fmt
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(
            f"cannot tell the format of {path} from its suffix {suffix!r}: use .npy, .csv, .tsv, .txt or "
            f".parquet, or set data.format=npy|csv|tsv|parquet"
        )
    return FORMATS[suffix]


def open_series(
    path: str | os.PathLike,
    fmt: str = "auto",
    cache_dir: str | os.PathLike = "data/.series_cache",
    comment: str = "#",
    delimiter: str | None = None,
) -> SeriesArray:
    """Open ``path`` for random access; text and Parquet are converted once into ``cache_dir``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"recording file not found: {p} (set data.path=/path/to/recording.npy|.csv|.tsv|.parquet)")
    if p.is_dir():
        raise UserError(f"data.path points to a directory, not a file: {p}")
    if p.stat().st_size == 0:
        raise UserError(f"recording file is empty: {p}")
    kind = detect_format(p, fmt)
    if kind == "npy":
        return _open_npy(p)
    stat = p.stat()
    key = json.dumps([str(p.resolve()), stat.st_size, stat.st_mtime_ns, kind, comment, delimiter])
    stem = Path(cache_dir) / f"{p.name}.{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    meta = _with(stem, ".json")
    if not meta.exists():
        with open(p, "rb") as fh:
            if kind == "parquet":
                columns, rows = _parquet_to_raw(p, stem)
            else:
                columns, rows = text_to_raw(fh, stem, delimiter or _DELIMITERS[kind], comment, name=str(p))
        _write_json(meta, {"source": str(p), "columns": columns, "rows": rows})
    info = json.loads(meta.read_text())
    data = _map_raw(_with(stem, ".f32"), info["rows"], len(info["columns"]))
    return SeriesArray(p, data, list(info["columns"]), _with(stem, ".f32") if info["rows"] else None)


def _open_npy(p: Path) -> SeriesArray:
    try:
        data = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable .npy is the same user mistake
        raise UserError(f"{p} is not a readable .npy array ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiub":
        raise UserError(f"{p} must hold a numeric array, found dtype {getattr(data, 'dtype', type(data))}")
    if data.ndim == 1:
        data = data.reshape(-1, 1)
    if data.ndim != 2:
        raise UserError(f"{p} must be a (samples, channels) or (samples,) array, found shape {data.shape}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise UserError(f"{p} holds no samples (shape {data.shape})")
    return SeriesArray(p, data, [str(i) for i in range(data.shape[1])], p)


def _with(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (``Path.with_suffix`` would replace the part after a dot in the name)."""
    return stem.parent / (stem.name + suffix)


def _map_raw(path: Path, rows: int, cols: int) -> np.ndarray:
    if rows == 0:
        return np.zeros((0, cols), dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(rows, cols))


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(obj, tmp)
    Path(tmp.name).replace(path)  # atomic: the JSON is the commit marker of a finished conversion


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return field.strip().lower() in {"", "nan", "na", "n/a", "null", "none", "-nan", "inf", "-inf"}
    return True


def _sniff_text(fh: IO[bytes], delimiter: str, comment: str, name: str) -> tuple[int, list[str] | None, int, bool]:
    """(comment lines to skip, header names or None, number of fields, trailing delimiter) of a text file."""
    skip = 0
    first: str | None = None
    for raw in fh:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if (comment and line.startswith(comment)) or not line.strip():
            skip += 1
            if skip > 100_000:
                break
            continue
        first = line
        break
    if first is None:
        raise UserError(f"{name} has no data rows (only comments or blank lines)")
    fields = first.split(delimiter)
    trailing = len(fields) > 1 and fields[-1].strip() == ""  # `1\t2\t` rows: the last field is empty
    if trailing:
        fields = fields[:-1]
    if all(_is_number(f) for f in fields):
        return skip, None, len(fields), trailing
    return skip, [f.strip() for f in fields], len(fields), trailing


def raw_path(stem: Path) -> Path:
    """The float32 file that :func:`text_to_raw` writes for ``stem``."""
    return _with(stem, ".f32")


def text_to_raw(
    fh: IO[bytes], stem: Path, delimiter: str, comment: str = "#", name: str = "<stream>"
) -> tuple[list[str], int]:
    """Stream a delimited text file (seekable binary handle) into ``raw_path(stem)`` as float32 rows.

    A first row with any non-numeric field is a header (its names become the column names); columns
    whose first value is not a number (e.g. timestamps) are left out. Empty fields and ``nan`` become
    NaN. Returns ``(column names, rows)``.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    start = fh.tell()
    skip, header, n_fields, trailing = _sniff_text(fh, delimiter, comment, name)
    fh.seek(start)
    names = header if header is not None else [str(i) for i in range(n_fields)]
    all_names = [f"__col{i}" for i in range(n_fields + int(trailing))]
    if header is None:
        keep = list(range(n_fields))
    else:  # numeric columns are those whose first data value is a number
        fh.seek(start)
        lines = iter(fh)
        for _ in range(skip + 1):
            next(lines)
        first_data = next(lines, b"").decode("utf-8", errors="replace").rstrip("\r\n").split(delimiter)
        fh.seek(start)
        keep = [i for i in range(n_fields) if i < len(first_data) and _is_number(first_data[i])]
        if not keep:
            raise UserError(f"{name} has no numeric column under its header {header}")
    read = pacsv.ReadOptions(skip_rows=skip + int(header is not None), column_names=all_names, block_size=16 << 20)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    convert = pacsv.ConvertOptions(
        column_types={all_names[i]: pa.float64() for i in keep},
        include_columns=[all_names[i] for i in keep],
        null_values=["", "nan", "NaN", "NAN", "NA", "N/A", "null", "NULL", "None", "-nan"],
    )
    try:
        reader = pacsv.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
        rows = _write_batches((_batch_array(b) for b in reader), stem, len(keep))
    except pa.ArrowInvalid as exc:
        raise UserError(f"cannot read {name} as delimited numbers: {str(exc).splitlines()[0]}") from exc
    return [names[i] for i in keep], rows


def _batch_array(batch: Any) -> np.ndarray:
    cols = [batch.column(i).to_numpy(zero_copy_only=False) for i in range(batch.num_columns)]
    return np.stack(cols, axis=1).astype(np.float32, copy=False) if cols else np.zeros((0, 0), np.float32)


def _parquet_to_raw(p: Path, stem: Path) -> tuple[list[str], int]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a declared dependency
        raise UserError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    try:
        pf = pq.ParquetFile(p)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{p} is not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    numeric = [
        f.name
        for f in pf.schema_arrow
        if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
    ]
    if not numeric:
        raise UserError(f"{p} has no numeric column (schema: {pf.schema_arrow})")
    batches = (
        np.stack([b.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in numeric], axis=1)
        for b in pf.iter_batches(batch_size=_CHUNK, columns=numeric)
    )
    return numeric, _write_batches(batches, stem, len(numeric))


def _write_batches(batches: Iterator[np.ndarray], stem: Path, cols: int) -> int:
    """Append ``(rows, cols)`` float32 blocks to ``stem.f32`` (atomically); returns the row count."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with tempfile.NamedTemporaryFile("wb", dir=stem.parent, delete=False, suffix=".tmp") as tmp:
        try:
            for block in batches:
                block = np.ascontiguousarray(block, dtype=np.float32).reshape(-1, cols)
                tmp.write(block.tobytes())
                rows += block.shape[0]
        except BaseException:
            tmp.close()
            Path(tmp.name).unlink(missing_ok=True)
            raise
    Path(tmp.name).replace(_with(stem, ".f32"))
    return rows


def iter_chunks(start: int, stop: int, chunk: int = _CHUNK) -> Iterator[tuple[int, int]]:
    for s in range(start, stop, chunk):
        yield s, min(s + chunk, stop)


def first_nonfinite(arr: SeriesArray, columns: Sequence[int], start: int = 0, stop: int | None = None) -> tuple[int, int] | None:
    """``(sample, column)`` of the first NaN/inf in ``arr[start:stop, columns]``, or ``None``."""
    stop = len(arr) if stop is None else stop
    if arr.data.dtype.kind in "iub":
        return None
    for s, e in iter_chunks(start, stop):
        block = np.asarray(arr.data[s:e][:, list(columns)])
        bad = ~np.isfinite(block)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            return s + int(row), int(columns[col])
    return None


def interpolate_nonfinite(window: np.ndarray) -> np.ndarray:
    """Replace NaN/inf in each channel of ``(samples, channels)`` by linear interpolation.

    Works inside the window only: gaps at its ends take the nearest finite value; a channel with no
    finite value becomes 0 (the training mean, once normalised).
    """
    out = window.copy()
    idx = np.arange(window.shape[0])
    for c in range(window.shape[1]):
        ok = np.isfinite(window[:, c])
        if ok.all():
            continue
        out[:, c] = np.interp(idx, idx[ok], window[ok, c]) if ok.any() else 0.0
    return out


def channel_stats(
    arr: SeriesArray, ranges: Sequence[tuple[int, int]], columns: Sequence[int], max_samples: int = 20_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation of each column over ``ranges`` (finite values only, float64).

    Evenly subsampled by chunks to at most ~``max_samples`` samples. Returns ``(mean, std, count)``,
    ``count`` being each column's number of finite samples used.
    """
    cols = list(columns)
    total = sum(max(0, e - s) for s, e in ranges)
    chunk = 65_536
    keep_every = max(1, int(np.ceil(total / max(max_samples, chunk))))
    n = np.zeros(len(cols))
    s1 = np.zeros(len(cols))
    s2 = np.zeros(len(cols))
    k = 0
    # Two passes would be exact; a shifted one-pass sum (shift = first finite values) is stable enough.
    shift: np.ndarray | None = None
    for start, stop in ranges:
        for s, e in iter_chunks(start, stop, chunk):
            if k % keep_every == 0:
                block = np.asarray(arr.data[s:e][:, cols], dtype=np.float64)
                ok = np.isfinite(block)
                if shift is None and ok.any():
                    shift = np.array([block[ok[:, j], j][0] if ok[:, j].any() else 0.0 for j in range(len(cols))])
                x = np.where(ok, block - (shift if shift is not None else 0.0), 0.0)
                n += ok.sum(0)
                s1 += x.sum(0)
                s2 += (x * x).sum(0)
            k += 1
    safe_n = np.maximum(n, 1)
    mean = s1 / safe_n
    var = np.maximum(s2 / safe_n - mean**2, 0.0)
    return mean + (shift if shift is not None else 0.0), np.sqrt(var), n
