"""Genome intervals and train/validation/test splits that never overlap.

Windows are only ever cut *inside* one interval, so intervals that do not overlap give windows
that do not overlap across splits. Two ways to get them: a BED file with a split column, or, with
no BED, each sequence cut into three consecutive regions (train | validation | test).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from longseq.errors import UserError

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


@dataclass(frozen=True)
class Interval:
    """A half-open, 0-based region ``[start, end)`` of sequence ``name`` assigned to ``split``."""

    name: str
    start: int
    end: int
    split: str

    @property
    def length(self) -> int:
        return self.end - self.start


def split_by_region(
    lengths: dict[str, int], val_fraction: float, test_fraction: float, min_length: int
) -> list[Interval]:
    """Cut every sequence of at least ``min_length`` bases into consecutive train | val | test regions."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )
    out: list[Interval] = []
    for name, length in lengths.items():
        train_end = int(round(length * (1 - val_fraction - test_fraction)))
        val_end = int(round(length * (1 - test_fraction)))
        for split, start, end in (("train", 0, train_end), ("val", train_end, val_end), ("test", val_end, length)):
            if end - start >= min_length:
                out.append(Interval(name, start, end, split))
    return out


def read_bed(path: str | os.PathLike, lengths: dict[str, int], split_column: int = 4) -> list[Interval]:
    """Read a BED file whose ``split_column`` (1-based) says train/val/test for each interval.

    Names absent from the FASTA and coordinates outside a sequence are errors, listed by name.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"BED file not found: {p} (set data.bed=/path/to/intervals.bed or data.bed=null)")
    out: list[Interval] = []
    missing: set[str] = set()
    with open(p) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) < max(3, split_column):
                raise UserError(
                    f"{p}:{lineno}: expected at least {max(3, split_column)} tab-separated columns "
                    f"(chrom, start, end, ..., split in column {split_column}); got {len(cols)}"
                )
            name = cols[0]
            try:
                start, end = int(cols[1]), int(cols[2])
            except ValueError:
                raise UserError(f"{p}:{lineno}: start/end must be integers, got {cols[1]!r}, {cols[2]!r}") from None
            split = _SPLIT_ALIASES.get(cols[split_column - 1].strip().lower())
            if split is None:
                raise UserError(
                    f"{p}:{lineno}: split column {split_column} is {cols[split_column - 1]!r}; "
                    "expected train, val or test"
                )
            if name not in lengths:
                missing.add(name)
                continue
            if not 0 <= start < end <= lengths[name]:
                raise UserError(
                    f"{p}:{lineno}: interval {name}:{start}-{end} lies outside the sequence (length {lengths[name]})"
                )
            out.append(Interval(name, start, end, split))
    if missing:
        known = ", ".join(list(lengths)[:5]) + (", ..." if len(lengths) > 5 else "")
        raise UserError(
            f"{p} names sequences absent from the FASTA: {', '.join(sorted(missing))} (FASTA has: {known})"
        )
    check_disjoint(out)
    return out


def check_disjoint(intervals: list[Interval]) -> None:
    """Raise if intervals of *different* splits overlap (that would leak training data)."""
    by_name: dict[str, list[Interval]] = {}
    for iv in intervals:
        by_name.setdefault(iv.name, []).append(iv)
    for name, ivs in by_name.items():
        ivs.sort(key=lambda iv: iv.start)
        furthest: Interval | None = None
        for iv in ivs:
            if furthest is not None and iv.start < furthest.end and iv.split != furthest.split:
                raise UserError(
                    f"BED intervals overlap across splits: {name}:{furthest.start}-{furthest.end} "
                    f"({furthest.split}) and {name}:{iv.start}-{iv.end} ({iv.split})"
                )
            if furthest is None or iv.end > furthest.end:
                furthest = iv
