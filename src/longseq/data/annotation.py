"""Per-base gene-structure labels from a GFF3 or GTF annotation aligned to a FASTA.

The annotation is read once into per-base **feature flags**, one ``uint8`` per base of every FASTA
sequence (bit set = the base is covered by that feature on either strand):

    CDS (1)     inside a CDS feature
    exon (2)    inside an exon, or a CDS (a CDS is exonic even where a file lists no exon for it)
    intron (4)  inside a transcript's span (first to last exon/CDS of one Parent / transcript_id),
                and not exonic in any transcript
    gene (8)    inside a gene-like feature (gene, pseudogene, ncRNA_gene, ...) or a transcript span

Labels are then one table lookup over the flags (:func:`label_table`):

- ``labels: gene_structure`` (multiclass, one class per base by priority CDS > exon > intron >
  intergenic): classes ``intergenic, intron, exon, CDS``, where ``exon`` means *exonic but not
  coding* (UTRs, exons of non-coding RNAs and pseudogenes);
- ``labels: [CDS, exon, ...]`` (multilabel, any subset of CDS, exon, intron, gene): one binary
  target per listed feature, e.g. ``exon`` is then 1 on coding exons too.

Labels are strand-agnostic, so reverse-complementing a window only reverses its labels.

Coverage is computed with NumPy, never per base in Python: each feature adds +1 at its start and -1
at its end of a difference array whose cumulative sum is the number of features covering a base.
Transcript spans are per-group minima/maxima (``np.minimum.at``). Only the feature *lines* are read
in Python (a few seconds for a whole-genome GFF).

Bad input is a :class:`UserError` naming the problem: sequence names absent from the FASTA (listed,
with the FASTA's names), coordinates outside a sequence, malformed lines, no usable feature.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from longseq.errors import UserError

CDS_BIT, EXON_BIT, INTRON_BIT, GENE_BIT = 1, 2, 4, 8
FEATURE_BITS = {"CDS": CDS_BIT, "exon": EXON_BIT, "intron": INTRON_BIT, "gene": GENE_BIT}
GENE_STRUCTURE = ("intergenic", "intron", "exon", "CDS")  # multiclass, index = label
# Feature types (column 3) that make a base genic; matched case-insensitively.
GENE_TYPES = frozenset(
    t.lower() for t in ("gene", "pseudogene", "ncRNA_gene", "transposable_element_gene", "protein_coding_gene")
)
_GFF3_PARENT = re.compile(r"(?:^|;)\s*Parent=([^;]+)")
_GFF3_ID = re.compile(r"(?:^|;)\s*ID=([^;]+)")
_GTF_TRANSCRIPT = re.compile(r'transcript_id\s+"([^"]*)"')


def label_spec(labels: str | Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``("multiclass", GENE_STRUCTURE)`` for ``"gene_structure"``, or ``("multilabel", features)``."""
    if isinstance(labels, str):
        if labels != "gene_structure":
            raise UserError(
                f"data.labels={labels!r}: use gene_structure (multiclass intergenic/intron/exon/CDS) or a list "
                f"of features for multilabel targets, e.g. data.labels=[CDS,exon] (features: {', '.join(FEATURE_BITS)})"
            )
        return "multiclass", GENE_STRUCTURE
    names = tuple(str(x) for x in labels)
    unknown = [x for x in names if x not in FEATURE_BITS]
    if not names or unknown or len(set(names)) != len(names):
        raise UserError(
            f"data.labels={list(names)}: a multilabel list needs distinct features among "
            f"{', '.join(FEATURE_BITS)}" + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return "multilabel", names


def label_table(labels: str | Sequence[str]) -> np.ndarray:
    """Lookup table from flags (0..15) to labels: ``(16,)`` int64 classes, or ``(16, C)`` uint8 targets."""
    mode, names = label_spec(labels)
    flags = np.arange(16)
    if mode == "multiclass":
        out = np.zeros(16, dtype=np.int64)  # intergenic
        out[(flags & INTRON_BIT) != 0] = 1
        out[(flags & EXON_BIT) != 0] = 2
        out[(flags & CDS_BIT) != 0] = 3  # later assignments win: CDS > exon > intron > intergenic
        return out
    return np.stack([(flags & FEATURE_BITS[n]) != 0 for n in names], axis=1).astype(np.uint8)


def coverage(length: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Bool ``(length,)``: bases inside at least one half-open ``[start, end)`` interval."""
    if len(starts) == 0:
        return np.zeros(length, dtype=bool)
    diff = np.bincount(starts, minlength=length + 1) - np.bincount(ends, minlength=length + 1)
    return np.cumsum(diff[:length]) > 0


def _open_text(path: Path) -> Iterator[str]:
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        yield from fh


def _is_gtf(path: Path, first_attributes: str | None) -> bool:
    name = path.name.lower().removesuffix(".gz").removesuffix(".bgz")
    if name.endswith(".gtf"):
        return True
    if name.endswith((".gff", ".gff3")):
        return False
    return first_attributes is not None and '"' in first_attributes and "=" not in first_attributes


class _Rows:
    """Feature rows kept from the file, as parallel lists (turned into arrays once)."""

    def __init__(self) -> None:
        self.seqid: list[str] = []
        self.start: list[int] = []  # 0-based, half-open
        self.end: list[int] = []
        self.group: list[str] = []  # transcript key ("" = none); gene rows: ""

    def add(self, seqid: str, start: int, end: int, group: str = "") -> None:
        self.seqid.append(seqid)
        self.start.append(start)
        self.end.append(end)
        self.group.append(group)


def read_annotation(path: str | os.PathLike, lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """Feature flags ``uint8 (length,)`` for every sequence of ``lengths`` (FASTA name -> length).

    Accepts GFF3 or GTF, plain or gzip. Sequences without any feature are all intergenic (0).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"annotation file not found: {p} (set data.annotation=/path/to/genes.gff3 or .gtf)")
    cds, exons, genes = _Rows(), _Rows(), _Rows()
    missing: dict[str, int] = {}
    gtf: bool | None = None
    n_lines = 0
    for lineno, line in enumerate(_open_text(p), 1):
        if line.startswith("#"):
            if line.startswith("##FASTA"):
                break  # GFF3 may embed sequences after this directive
            continue
        if not line.strip():
            continue
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) != 9:
            raise UserError(
                f"{p}:{lineno}: expected 9 tab-separated columns (GFF3/GTF: seqid source type start end "
                f"score strand phase attributes), got {len(cols)}"
            )
        n_lines += 1
        if gtf is None:
            gtf = _is_gtf(p, cols[8])
        ftype = cols[2]
        kind = "CDS" if ftype == "CDS" else "exon" if ftype == "exon" else "gene" if ftype.lower() in GENE_TYPES else None
        if kind is None:
            continue
        seqid = cols[0]
        try:
            start, end = int(cols[3]), int(cols[4])
        except ValueError:
            raise UserError(f"{p}:{lineno}: start/end must be integers, got {cols[3]!r}, {cols[4]!r}") from None
        if start < 1 or end < start:
            raise UserError(f"{p}:{lineno}: invalid coordinates {start}-{end} (1-based, start <= end)")
        if seqid not in lengths:
            missing[seqid] = missing.get(seqid, 0) + 1
            continue
        if end > lengths[seqid]:
            raise UserError(
                f"{p}:{lineno}: {ftype} {seqid}:{start}-{end} lies outside the sequence "
                f"(length {lengths[seqid]}); is the annotation for another assembly?"
            )
        if kind == "gene":
            genes.add(seqid, start - 1, end)
            continue
        for group in _groups(cols[8], gtf, lineno):
            (cds if kind == "CDS" else exons).add(seqid, start - 1, end, f"{seqid}\x00{group}" if group else "")
    if missing:
        known = ", ".join(list(lengths)[:5]) + (", ..." if len(lengths) > 5 else "")
        names = ", ".join(f"{n} ({c} features)" for n, c in sorted(missing.items())[:10])
        raise UserError(
            f"{p} names sequences absent from the FASTA: {names}{', ...' if len(missing) > 10 else ''} "
            f"(FASTA has: {known}); the annotation must use the FASTA's sequence names"
        )
    if not cds.seqid and not exons.seqid:
        raise UserError(f"{p} has no exon or CDS features ({n_lines} feature lines): not a gene annotation?")
    return _flags(lengths, cds, exons, genes)


def _groups(attributes: str, gtf: bool | None, lineno: int) -> list[str]:
    """Transcript keys of an exon/CDS row: GFF3 ``Parent`` (may list several), GTF ``transcript_id``."""
    if gtf:
        m = _GTF_TRANSCRIPT.search(attributes)
        return [m.group(1)] if m and m.group(1) else [""]
    m = _GFF3_PARENT.search(attributes)
    if m:
        return [g for g in m.group(1).split(",") if g] or [""]
    m = _GFF3_ID.search(attributes)  # a parentless exon is its own (intron-free) transcript
    return [f"id:{m.group(1)}" if m else f"line:{lineno}"]


def _flags(lengths: dict[str, int], cds: _Rows, exons: _Rows, genes: _Rows) -> dict[str, np.ndarray]:
    def arrays(rows: _Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.asarray(rows.seqid, dtype=object),
            np.asarray(rows.start, dtype=np.int64),
            np.asarray(rows.end, dtype=np.int64),
            np.asarray(rows.group, dtype=object),
        )

    c_seq, c_start, c_end, c_grp = arrays(cds)
    e_seq, e_start, e_end, e_grp = arrays(exons)
    g_seq, g_start, g_end, _ = arrays(genes)
    # Transcript spans: min start / max end over every exon and CDS row of one group.
    all_start, all_end = np.concatenate([c_start, e_start]), np.concatenate([c_end, e_end])
    all_grp = np.concatenate([c_grp, e_grp])
    grouped = all_grp != ""
    keys, inverse = np.unique(all_grp[grouped].astype(str), return_inverse=True)
    t_start = np.full(len(keys), np.iinfo(np.int64).max, dtype=np.int64)
    t_end = np.zeros(len(keys), dtype=np.int64)
    np.minimum.at(t_start, inverse, all_start[grouped])
    np.maximum.at(t_end, inverse, all_end[grouped])
    t_seq = np.array([k.split("\x00", 1)[0] for k in keys], dtype=object)

    rows = {"c": (c_seq, c_start, c_end), "e": (e_seq, e_start, e_end), "g": (g_seq, g_start, g_end), "t": (t_seq, t_start, t_end)}
    by_seq = {k: _index_by_name(seq) for k, (seq, _, _) in rows.items()}
    empty = np.zeros(0, dtype=np.int64)

    def cover(kind: str, name: str, length: int) -> np.ndarray:
        idx = by_seq[kind].get(name, empty)
        _, starts, ends = rows[kind]
        return coverage(length, starts[idx], ends[idx])

    out: dict[str, np.ndarray] = {}
    for name, length in lengths.items():
        is_cds = cover("c", name, length)
        is_exon = is_cds | cover("e", name, length)
        in_tx = cover("t", name, length)
        is_gene = in_tx | cover("g", name, length)
        flags = is_cds * CDS_BIT + is_exon * EXON_BIT + (in_tx & ~is_exon) * INTRON_BIT + is_gene * GENE_BIT
        out[name] = flags.astype(np.uint8)
    return out


def _index_by_name(names: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices per sequence name (one sort, not one comparison per sequence)."""
    if len(names) == 0:
        return {}
    uniq, inverse = np.unique(names.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
    return {str(u): order[bounds[i] : bounds[i + 1]] for i, u in enumerate(uniq)}
