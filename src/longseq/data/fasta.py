"""Random access to FASTA files through pyfaidx: validation, index building, per-process handles.

Three facts shape this module (see DESIGN.md):
- pyfaidx handles are not safe across forked DataLoader workers, so :class:`FastaReader` opens the
  file lazily and reopens it whenever it finds itself in a new process;
- concurrent index builds clobber ``.fai`` files, so :func:`ensure_index` builds it once, under a
  file lock, before any worker starts, and puts it in a writable cache folder when the FASTA's own
  folder is read-only (in fact we never write beside the user's FASTA; a fresh index found there is used);
- pyfaidx reads plain and bgzip FASTA; plain gzip cannot be indexed, so it is refused with the
  command that converts it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyfaidx

from longseq.errors import UserError

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class FastaIndex:
    """Where a FASTA's index files live (they may sit in a cache folder, not beside the FASTA)."""

    fasta: Path
    fai: Path
    gzi: Path | None


def _is_bgzf(head: bytes) -> bool:
    # BGZF is gzip with the FEXTRA flag and a 'BC' subfield in the first member's header.
    return len(head) >= 16 and head[:2] == _GZIP_MAGIC and head[3] & 4 != 0 and head[12:14] == b"BC"


def validate_fasta(path: str | os.PathLike) -> Path:
    """Check that ``path`` is a readable plain or bgzip FASTA; raise :class:`UserError` otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"FASTA file not found: {p} (set data.fasta=/path/to/genome.fa)")
    if p.is_dir():
        raise UserError(f"data.fasta points to a directory, not a file: {p} (name the .fa/.fa.gz file inside it)")
    if p.stat().st_size == 0:
        raise UserError(f"FASTA file is empty: {p}")
    with open(p, "rb") as fh:
        head = fh.read(64)
    if head[:2] == _GZIP_MAGIC:
        if not _is_bgzf(head):
            raise UserError(
                f"{p} is plain gzip, which cannot be indexed for random access; recompress it with bgzip: "
                f"`gunzip -c {p} | bgzip > {p.with_suffix('')}.bgz.gz` (or gunzip it)"
            )
        from Bio import bgzf

        with bgzf.BgzfReader(str(p), "rb") as fh:
            head = fh.read(64)
    first = head.lstrip()[:1]
    if first != b">":
        raise UserError(f"{p} is not a FASTA file: it must start with a '>' header line (found {head[:20]!r})")
    if not p.name.lower().endswith((".gz", ".bgz")) and head[:2] == _GZIP_MAGIC:
        raise UserError(f"{p} is bgzip-compressed but its name does not end in .gz or .bgz: rename it")
    return p


def _cache_dir_for(fasta: Path, cache_root: Path) -> Path:
    digest = hashlib.sha1(str(fasta.resolve()).encode()).hexdigest()[:12]
    return cache_root / f"{fasta.name}.{digest}"


def index_paths(fasta: Path, cache_root: str | os.PathLike) -> FastaIndex:
    """Index locations: an up-to-date index beside the FASTA if one exists, else our cache folder.

    We never write next to the user's FASTA: their folder may be read-only or shared, and a stale
    ``.fai`` there belongs to them.
    """
    bgz = fasta.name.lower().endswith((".gz", ".bgz"))
    beside = FastaIndex(fasta, Path(str(fasta) + ".fai"), Path(str(fasta) + ".gzi") if bgz else None)
    fresh = all(
        p.exists() and p.stat().st_mtime >= fasta.stat().st_mtime for p in (beside.fai, beside.gzi) if p is not None
    )
    if fresh:
        return beside
    folder = _cache_dir_for(fasta, Path(cache_root))
    return FastaIndex(fasta, folder / (fasta.name + ".fai"), folder / (fasta.name + ".gzi") if bgz else None)


def ensure_index(fasta: str | os.PathLike, cache_root: str | os.PathLike) -> FastaIndex:
    """Validate ``fasta`` and build its index once (file-locked); return where the index lives."""
    path = validate_fasta(fasta)
    idx = index_paths(path, cache_root)
    idx.fai.parent.mkdir(parents=True, exist_ok=True)
    lock_path = idx.fai.with_name(idx.fai.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here instead of racing the build
        try:
            handle = _open(idx, build=True)
            handle.close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        lock_path.unlink()
    except OSError:
        pass
    return idx


def _open(idx: FastaIndex, build: bool) -> pyfaidx.Fasta:
    try:
        return pyfaidx.Fasta(
            str(idx.fasta),
            indexname=str(idx.fai),
            gzi_indexname=str(idx.gzi) if idx.gzi else None,
            as_raw=True,
            sequence_always_upper=False,
            rebuild=build,
            build_index=build,
        )
    except pyfaidx.UnsupportedCompressionFormat as exc:
        raise UserError(f"{idx.fasta}: {exc}") from exc
    except (pyfaidx.FastaIndexingError, ValueError) as exc:
        raise UserError(f"{idx.fasta} is not a valid FASTA file ({exc}); check the file's line lengths") from exc


class FastaReader:
    """A picklable FASTA reader that opens its pyfaidx handle lazily, once per process."""

    def __init__(self, index: FastaIndex) -> None:
        self.index = index
        self._handle: pyfaidx.Fasta | None = None
        self._pid: int | None = None
        self.lengths: dict[str, int] = self._read_lengths(index.fai)

    @staticmethod
    def _read_lengths(fai: Path) -> dict[str, int]:
        lengths: dict[str, int] = {}
        with open(fai) as fh:
            for line in fh:
                name, length = line.split("\t")[:2]
                lengths[name] = int(length)
        return lengths

    def _fasta(self) -> pyfaidx.Fasta:
        if self._handle is None or self._pid != os.getpid():
            # A handle inherited through fork shares its file offset with the parent: never reuse it.
            self._handle = _open(self.index, build=False)
            self._pid = os.getpid()
        return self._handle

    def fetch(self, name: str, start: int, end: int) -> bytes:
        """Bases ``[start, end)`` (0-based, half-open) of sequence ``name`` as raw bytes."""
        if start < 0 or end > self.lengths[name] or start > end:
            raise IndexError(f"{name}:{start}-{end} is outside the sequence (length {self.lengths[name]})")
        return self._fasta()[name][start:end].encode("ascii")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None  # never send an open handle to a worker
        state["_pid"] = None
        return state
