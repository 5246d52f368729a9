"""Bad input gets a clear one-line error (and, through train.py, no traceback and exit status 2)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ASSETS, ROOT

from longseq.data.fasta_datamodule import FastaDataModule
from longseq.errors import UserError


def build(tmp_path: Path, **kw) -> FastaDataModule:
    kw.setdefault("seq_len", 256)
    dm = FastaDataModule(index_cache_dir=str(tmp_path / "cache"), **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_missing_fasta(tmp_path):
    with pytest.raises(UserError, match="FASTA file not found.*data.fasta="):
        build(tmp_path, fasta=str(tmp_path / "nope.fa"))


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(UserError, match="directory, not a file"):
        build(tmp_path, fasta=str(tmp_path))


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.fa"
    empty.touch()
    with pytest.raises(UserError, match="empty"):
        build(tmp_path, fasta=str(empty))


def test_not_a_fasta(tmp_path):
    bad = tmp_path / "reads.fa"
    bad.write_text("@read1\nACGT\n+\nIIII\n")
    with pytest.raises(UserError, match="not a FASTA file"):
        build(tmp_path, fasta=str(bad))


def test_malformed_fasta_lines(tmp_path):
    bad = tmp_path / "ragged.fa"
    bad.write_text(">a\nACGTACGT\nACG\nACGTACGT\n>b\nACGT\n")
    with pytest.raises(UserError, match="not a valid FASTA"):
        build(tmp_path, fasta=str(bad), seq_len=2)


def test_plain_gzip_is_refused_with_the_fix(tmp_path):
    gz = tmp_path / "genome.fa.gz"
    gz.write_bytes(gzip.compress((ASSETS / "tiny.fa").read_bytes()))
    with pytest.raises(UserError, match="plain gzip.*bgzip"):
        build(tmp_path, fasta=str(gz))


def test_no_sequence_long_enough(tiny_fasta, tmp_path):
    with pytest.raises(UserError, match="no sequence .* as long as data.seq_len=100000"):
        build(tmp_path, fasta=str(tiny_fasta), seq_len=100_000)


def test_bed_with_unknown_sequences(tiny_fasta, tmp_path):
    bed = tmp_path / "bad.bed"
    bed.write_text("chrA\t0\t5000\ttrain\nchr7\t0\t100\tval\nchrZ\t0\t100\ttest\n")
    with pytest.raises(UserError, match="absent from the FASTA: chr7, chrZ"):
        build(tmp_path, fasta=str(tiny_fasta), bed=str(bed))


def test_bed_outside_sequence(tiny_fasta, tmp_path):
    bed = tmp_path / "bad.bed"
    bed.write_text("chrB\t0\t9001\ttrain\n")
    with pytest.raises(UserError, match="outside the sequence"):
        build(tmp_path, fasta=str(tiny_fasta), bed=str(bed))


@pytest.mark.parametrize("seq_len", [0, -5])
def test_seq_len_not_positive(seq_len, tiny_fasta, tmp_path):
    with pytest.raises(UserError, match="seq_len must be a positive integer"):
        build(tmp_path, fasta=str(tiny_fasta), seq_len=seq_len)


def run_train(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.fasta=/nonexistent/genome.fa"], "error: FASTA file not found: /nonexistent/genome.fa"),
        (["model/attention=nonesuch"], "Could not find 'model/attention/nonesuch'"),
        (["data=nonesuch"], "Could not find 'data/nonesuch'"),
    ],
)
def test_entry_point_reports_user_errors_without_traceback(overrides, message, tmp_path):
    result = run_train(*overrides, f"hydra.run.dir={tmp_path}/run")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
