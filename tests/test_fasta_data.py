"""FASTA streaming: windows equal Biopython's reading, splits never overlap, workers don't cross-talk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from Bio import SeqIO
from conftest import ASSETS
from torch.utils.data import DataLoader

from longseq.data.fasta import ensure_index
from longseq.data.fasta_datamodule import FastaDataModule
from longseq.data.intervals import Interval, check_disjoint, split_by_region
from longseq.data.tokenizer import PAD, encode
from longseq.errors import UserError


def biopython_genome(path: Path) -> dict[str, str]:
    return {rec.id: str(rec.seq) for rec in SeqIO.parse(str(path), "fasta")}


def make_dm(fasta: Path, tmp_path: Path, **kw) -> FastaDataModule:
    kw.setdefault("seq_len", 512)
    dm = FastaDataModule(fasta=str(fasta), index_cache_dir=str(tmp_path / "cache"), rc_prob=0.0, **kw)
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.mark.parametrize("kind", ["plain", "bgzip"])
def test_windows_equal_biopython_slices(kind, tiny_fasta, tiny_bgzip, tmp_path):
    fasta = tiny_fasta if kind == "plain" else tiny_bgzip
    genome = biopython_genome(ASSETS / "tiny.fa")
    dm = make_dm(fasta, tmp_path)
    train = dm.datasets["train"]
    rng = np.random.default_rng(0)
    for index in rng.integers(0, len(train), 25):
        name, start = train.locate(int(index))
        item = train[int(index)]
        expected = encode(genome[name][start : start + 512])
        if (expected == 4).float().mean() <= 0.5:  # mostly-N windows are replaced by design
            assert torch.equal(item["tokens"], expected)
    for split in ("val", "test"):
        ds = dm.datasets[split]
        for i, (name, start, end) in enumerate(ds.windows):
            item = ds[i]
            real = item["padding_mask"].sum()
            assert real == end - start
            assert torch.equal(item["tokens"][:real], encode(genome[name][start:end]))
            assert (item["tokens"][real:] == PAD).all()


def test_eval_windows_cover_every_base_once(tiny_fasta, tmp_path):
    dm = make_dm(tiny_fasta, tmp_path, seq_len=300)
    for split in ("val", "test"):
        ivs = [iv for iv in dm.intervals if iv.split == split]
        covered = sum(end - start for _, start, end in dm.datasets[split].windows)
        assert covered == sum(iv.length for iv in ivs)  # tiny.fa has no N run inside val/test


def test_splits_are_disjoint_and_windows_stay_inside(tiny_fasta, tmp_path):
    dm = make_dm(tiny_fasta, tmp_path)
    check_disjoint(dm.intervals)
    spans: dict[str, list[tuple[str, int, int]]] = {"train": [], "val": [], "test": []}
    for iv in dm.intervals:
        spans[iv.split].append((iv.name, iv.start, iv.end))
    train = dm.datasets["train"]
    for index in range(0, len(train), 97):
        name, start = train.locate(index)
        assert any(n == name and s <= start and start + 512 <= e for n, s, e in spans["train"])
    for split in ("val", "test"):
        for name, start, end in dm.datasets[split].windows:
            assert any(n == name and s <= start and end <= e for n, s, e in spans[split])
            for n, s, e in spans["train"]:
                assert n != name or end <= s or start >= e


def test_split_by_region_is_consecutive():
    ivs = split_by_region({"a": 1000}, 0.1, 0.2, min_length=1)
    assert [(iv.split, iv.start, iv.end) for iv in ivs] == [("train", 0, 700), ("val", 700, 800), ("test", 800, 1000)]


def test_overlapping_bed_splits_are_refused():
    with pytest.raises(UserError, match="overlap"):
        check_disjoint([Interval("a", 0, 100, "train"), Interval("a", 50, 150, "val")])


def test_bed_intervals_define_the_splits(tiny_fasta, tmp_path):
    dm = make_dm(tiny_fasta, tmp_path, bed=str(ASSETS / "tiny.bed"))
    got = sorted((iv.split, iv.name, iv.start, iv.end) for iv in dm.intervals)
    assert got == sorted(
        [("train", "chrA", 0, 9000), ("train", "chrB", 0, 6000), ("val", "chrA", 9000, 12000), ("test", "chrB", 6000, 9000)]
    )


def test_mostly_n_windows_are_skipped(tiny_fasta, tmp_path):
    # chrA has an N run at 6000-6600; with 512-base windows some training starts land inside it.
    dm = make_dm(tiny_fasta, tmp_path, max_n_fraction=0.1)
    train = dm.datasets["train"]
    for index in range(len(train)):
        name, start = train.locate(index)
        if name == "chrA" and 6000 <= start and start + 512 <= 6600:
            item = train[index]
            assert (item["tokens"] == 4).float().mean() <= 0.1
            break
    else:
        pytest.fail("no all-N window found in the fixture")


def test_two_workers_return_correct_windows(tiny_fasta, tmp_path):
    genome = biopython_genome(ASSETS / "tiny.fa")
    dm = make_dm(tiny_fasta, tmp_path, seq_len=128, max_n_fraction=1.0)
    train = dm.datasets["train"]
    indices = list(range(0, len(train), 37))
    subset = torch.utils.data.Subset(train, indices)
    loader = DataLoader(subset, batch_size=8, num_workers=2, shuffle=False)
    got = torch.cat([b["tokens"] for b in loader])
    for row, index in zip(got, indices, strict=True):
        name, start = train.locate(index)
        assert torch.equal(row, encode(genome[name][start : start + 128]))


def test_index_never_written_beside_the_users_fasta(tiny_fasta, tmp_path):
    before = sorted(p.name for p in tiny_fasta.parent.iterdir())
    idx = ensure_index(tiny_fasta, tmp_path / "cache")
    assert idx.fai.exists() and idx.fai.parent != tiny_fasta.parent
    assert sorted(p.name for p in tiny_fasta.parent.iterdir()) == before
    # A fresh index the user already has is used as it is.
    import pyfaidx

    pyfaidx.Faidx(str(tiny_fasta)).close()
    assert ensure_index(tiny_fasta, tmp_path / "cache").fai == Path(str(tiny_fasta) + ".fai")


def test_base_frequencies_come_from_the_training_split(tiny_fasta, tmp_path):
    dm = make_dm(tiny_fasta, tmp_path)
    genome = biopython_genome(ASSETS / "tiny.fa")
    counts = np.zeros(4)
    for iv in dm.intervals:
        if iv.split == "train":
            tokens = encode(genome[iv.name][iv.start : iv.end]).numpy()
            counts += np.bincount(tokens, minlength=5)[:4]
    assert np.allclose(dm.base_frequencies(), (counts + 1) / (counts + 1).sum())
