"""Labelled genome intervals (promoters, enhancers, ...) from a BED or TSV file, for ``dna_classify``.

Two layouts are read:

- a **TSV with a header** naming its columns (a leading ``#`` is allowed): ``chrom``, ``start``,
  ``end`` and ``label`` are required, ``split`` (train/val/test) and ``name`` are optional, any
  other column is ignored. ``chr``/``chromosome``/``seqid`` are accepted for ``chrom``, ``class``
  for ``label``;
- a **BED** without a header: ``chrom start end label [split]``.

Coordinates are 0-based, half-open (BED). Without a split column each sequence is cut into
consecutive train | val | test regions (``val_fraction``, ``test_fraction``) and an interval goes
to the region holding its midpoint; intervals of different splits may never overlap.

Bad input is a :class:`UserError` naming the file and line: missing columns, non-integer or
out-of-range coordinates, sequences absent from the FASTA (listed), labels outside ``classes``,
classes seen in validation/test but never in training.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from longseq.data.intervals import _SPLIT_ALIASES, Interval, check_disjoint, split_by_region
from longseq.errors import UserError

REQUIRED = ("chrom", "start", "end", "label")
_ALIASES = {
    "chrom": "chrom", "chr": "chrom", "chromosome": "chrom", "seqid": "chrom", "seqname": "chrom",
    "start": "start", "chromstart": "start", "end": "end", "stop": "end", "chromend": "end",
    "label": "label", "class": "label", "split": "split", "name": "name",
}


@dataclass(frozen=True)
class LabelledInterval:
    """``[start, end)`` of sequence ``name`` with class ``label``, in ``split``; ``line`` for messages."""

    name: str
    start: int
    end: int
    label: str
    split: str
    line: int

    @property
    def length(self) -> int:
        return self.end - self.start


def _header(cols: list[str]) -> dict[str, int] | None:
    """Column positions if ``cols`` is a header line (it names start and end), else None."""
    names = [_ALIASES.get(c.strip().lstrip("#").strip().lower()) for c in cols]
    if "start" not in names or "end" not in names:
        return None
    return {n: i for i, n in enumerate(names) if n is not None}


def read_labelled_intervals(
    path: str | os.PathLike,
    lengths: dict[str, int],
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> tuple[list[LabelledInterval], tuple[str, ...]]:
    """Read and validate the intervals; returns them and the class names (label index order).

    ``classes`` fixes the label set and order; without it the classes are the training labels, sorted.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"label file not found: {p} (set data.intervals=/path/to/labels.tsv or .bed)")
    rows: list[tuple[int, list[str]]] = []
    columns: dict[str, int] | None = None
    with open(p) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("track", "browser")):
                continue
            cols = line.rstrip("\r\n").split("\t")
            if columns is None:
                columns = _header(cols)
                if columns is not None:
                    missing = [c for c in REQUIRED if c not in columns]
                    if missing:
                        raise UserError(
                            f"{p}:{lineno}: the header lacks column(s) {', '.join(missing)} "
                            f"(found: {', '.join(c.strip() for c in cols)}; required: {', '.join(REQUIRED)})"
                        )
                    continue
                if line.startswith("#"):
                    continue  # a comment before the data
                columns = {"chrom": 0, "start": 1, "end": 2, "label": 3, "split": 4}  # BED layout
            if line.startswith("#"):
                continue
            rows.append((lineno, cols))
    if columns is None or not rows:
        raise UserError(f"{p} holds no intervals")

    bed = columns.get("split") == 4 and columns.get("label") == 3 and "name" not in columns
    out: list[tuple[str, int, int, str, str | None, int]] = []
    missing_names: Counter[str] = Counter()
    for lineno, cols in rows:
        need = max(columns[c] for c in REQUIRED) + 1
        if len(cols) < need:
            layout = "chrom, start, end, label[, split]" if bed else ", ".join(REQUIRED)
            raise UserError(f"{p}:{lineno}: expected at least {need} tab-separated columns ({layout}), got {len(cols)}")
        name, label = cols[columns["chrom"]], cols[columns["label"]].strip()
        try:
            start, end = int(cols[columns["start"]]), int(cols[columns["end"]])
        except ValueError:
            raise UserError(
                f"{p}:{lineno}: start/end must be integers, got {cols[columns['start']]!r}, {cols[columns['end']]!r}"
            ) from None
        if not label:
            raise UserError(f"{p}:{lineno}: empty label")
        split = None
        if "split" in columns and columns["split"] < len(cols) and cols[columns["split"]].strip():
            raw = cols[columns["split"]].strip()
            split = _SPLIT_ALIASES.get(raw.lower())
            if split is None:
                raise UserError(f"{p}:{lineno}: split is {raw!r}; expected train, val or test")
        if name not in lengths:
            missing_names[name] += 1
            continue
        if not 0 <= start < end <= lengths[name]:
            raise UserError(f"{p}:{lineno}: interval {name}:{start}-{end} lies outside the sequence (length {lengths[name]})")
        out.append((name, start, end, label, split, lineno))
    if missing_names:
        known = ", ".join(list(lengths)[:5]) + (", ..." if len(lengths) > 5 else "")
        listed = ", ".join(f"{n} ({c} intervals)" for n, c in sorted(missing_names.items())[:10])
        raise UserError(f"{p} names sequences absent from the FASTA: {listed} (FASTA has: {known})")

    with_split = [r for r in out if r[4] is not None]
    if with_split and len(with_split) != len(out):
        raise UserError(f"{p}: some intervals have a split and some do not; give every interval one, or none")
    if not with_split:  # assign by region: the split holding each interval's midpoint
        regions = split_by_region(lengths, val_fraction, test_fraction, min_length=1)
        by_name: dict[str, list[Interval]] = {}
        for r in regions:
            by_name.setdefault(r.name, []).append(r)
        out = [
            (n, s, e, lab, next(r.split for r in by_name[n] if r.start <= (s + e) // 2 < r.end), ln)
            for n, s, e, lab, _, ln in out
        ]
    intervals = [LabelledInterval(n, s, e, lab, sp, ln) for n, s, e, lab, sp, ln in out]
    try:
        check_disjoint([Interval(iv.name, iv.start, iv.end, iv.split) for iv in intervals])
    except UserError as exc:
        raise UserError(f"{p}: {exc}; give a split column that keeps overlapping intervals together") from None
    return intervals, _classes(p, intervals, classes)


def _classes(p: Path, intervals: list[LabelledInterval], classes: Sequence[str] | None) -> tuple[str, ...]:
    seen = Counter(iv.label for iv in intervals)
    if classes is not None:
        names = tuple(str(c) for c in classes)
        if len(names) < 2 or len(set(names)) != len(names):
            raise UserError(f"data.classes={list(names)} must list at least 2 distinct classes")
        unknown = sorted(set(seen) - set(names))
        if unknown:
            first = next(iv.line for iv in intervals if iv.label in unknown)
            raise UserError(
                f"{p} has labels outside data.classes={list(names)}: {', '.join(unknown)} "
                f"({sum(seen[u] for u in unknown)} intervals, first at line {first})"
            )
        return names
    train = sorted({iv.label for iv in intervals if iv.split == "train"})
    unseen = sorted({iv.label for iv in intervals if iv.split != "train"} - set(train))
    if unseen:
        raise UserError(
            f"{p}: class(es) {', '.join(unseen)} appear in validation/test but never in training; "
            "fix the splits or list every class in data.classes"
        )
    if len(train) < 2:
        raise UserError(f"{p}: the training split has {len(train)} class(es) ({', '.join(train)}); need at least 2")
    return tuple(train)
