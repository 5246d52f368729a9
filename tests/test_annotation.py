"""Per-base labels from GFF3/GTF against a hand-checked fixture; bad annotations; annotation windows and splits."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch
from conftest import ASSETS

from longseq.data.annotation import GENE_STRUCTURE, coverage, label_table, read_annotation
from longseq.data.annotation_datamodule import IGNORE, AnnotationDataModule
from longseq.data.tokenizer import reverse_complement
from longseq.errors import UserError

LENGTHS = {"chrA": 12000, "chrB": 9000, "chrC": 500}
IG, N, E, C = 0, 1, 2, 3  # intergenic, intron, exon (non-coding), CDS

# tests/assets/tiny.gff3 worked out by hand, 0-based half-open runs: (start, end, class).
EXPECTED = {
    "chrA": [
        (0, 1000, IG), (1000, 1100, E), (1100, 1200, C), (1200, 1500, N), (1500, 1800, C),
        (1800, 2000, N), (2000, 2100, E),  # exon of isoform t2 only: exon beats t1's intron
        (2100, 2500, N), (2500, 2700, C), (2700, 3000, E), (3000, 6000, IG),
        (6000, 6200, E), (6200, 6500, C), (6500, 7500, N), (7500, 7700, C), (7700, 8000, E),  # minus strand
        (8000, 9000, IG), (9000, 9500, E),  # single-exon pseudogene: no intron
        (9500, 12000, IG),  # the mobile_genetic_element at 10000-10500 is not a gene
    ],
    "chrB": [
        (0, 2000, IG), (2000, 2500, E), (2500, 4500, N), (4500, 5000, E),  # lnc_RNA: exons, no CDS
        (5000, 6000, IG), (6000, 6300, E),  # exon shared by t5 and t6 (Parent=t5,t6)
        (6300, 7000, N), (7000, 7200, E), (7200, 7700, N), (7700, 8000, E), (8000, 9000, IG),
    ],
    "chrC": [(0, 500, IG)],
}
GENES = {"chrA": [(1000, 3000), (6000, 8000), (9000, 9500)], "chrB": [(2000, 5000), (6000, 8000)], "chrC": []}


def expand(runs: list[tuple[int, int, int]], length: int) -> np.ndarray:
    out = np.full(length, -1)
    for start, end, cls in runs:
        out[start:end] = cls
    assert (out >= 0).all()
    return out


def test_gene_structure_labels_match_the_hand_checked_gff3():
    flags = read_annotation(ASSETS / "tiny.gff3", LENGTHS)
    table = label_table("gene_structure")
    for name, length in LENGTHS.items():
        assert flags[name].shape == (length,) and flags[name].dtype == np.uint8
        np.testing.assert_array_equal(table[flags[name]], expand(EXPECTED[name], length), err_msg=name)


def test_gtf_gives_the_same_labels_gzip_too(tmp_path):
    gz = tmp_path / "tiny.gtf.gz"
    with open(ASSETS / "tiny.gtf", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    table = label_table("gene_structure")
    for path in (ASSETS / "tiny.gtf", gz):
        labels = table[read_annotation(path, LENGTHS)["chrA"]]
        np.testing.assert_array_equal(labels[:8500], expand(EXPECTED["chrA"], 12000)[:8500])
        assert (labels[8500:] == IG).all()  # the GTF has no pseudogene


def test_multilabel_targets():
    flags = read_annotation(ASSETS / "tiny.gff3", LENGTHS)
    table = label_table(["CDS", "exon", "intron", "gene"])
    targets = table[flags["chrA"]]  # (length, 4)
    classes = expand(EXPECTED["chrA"], 12000)
    np.testing.assert_array_equal(targets[:, 0], classes == C)
    np.testing.assert_array_equal(targets[:, 1], (classes == C) | (classes == E))  # CDS is exonic
    np.testing.assert_array_equal(targets[:, 2], classes == N)
    gene = np.zeros(12000, dtype=bool)
    for start, end in GENES["chrA"]:
        gene[start:end] = True
    np.testing.assert_array_equal(targets[:, 3], gene)
    assert label_table(["exon"]).shape == (16, 1)


def test_coverage_equals_a_naive_loop():
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 990, 200)
    ends = starts + rng.integers(1, 50, 200)
    naive = np.zeros(1000, dtype=bool)
    for s, e in zip(starts, ends, strict=True):
        naive[s:e] = True
    np.testing.assert_array_equal(coverage(1000, starts, np.minimum(ends, 1000)), naive)


def write(tmp_path, text: str, name: str = "bad.gff3"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_sequence_names_absent_from_the_fasta_are_listed(tmp_path):
    text = (ASSETS / "tiny.gff3").read_text().replace("chrA\t", "NC_004353.4\t").replace("chrB\t", "2L\t")
    with pytest.raises(UserError, match=r"absent from the FASTA: 2L \(\d+ features\), NC_004353\.4 .*FASTA has: chrA, chrB, chrC"):
        read_annotation(write(tmp_path, text), LENGTHS)


def test_coordinates_outside_the_sequence(tmp_path):
    bad = write(tmp_path, "chrC\tx\texon\t401\t600\t.\t+\t.\tParent=t\n")
    with pytest.raises(UserError, match=r"bad.gff3:1: exon chrC:401-600 lies outside the sequence \(length 500\)"):
        read_annotation(bad, LENGTHS)
    bad = write(tmp_path, "chrC\tx\tCDS\t0\t10\t.\t+\t0\tParent=t\n")
    with pytest.raises(UserError, match="invalid coordinates 0-10"):
        read_annotation(bad, LENGTHS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chrA\tx\texon\t1\t10\n", "expected 9 tab-separated columns"),
        ("chrA\tx\texon\tone\t10\t.\t+\t.\tParent=t\n", "start/end must be integers"),
        ("chrA\tx\tmobile_genetic_element\t1\t10\t.\t+\t.\tID=x\n", "no exon or CDS features"),
    ],
)
def test_malformed_annotations(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_annotation(write(tmp_path, text), LENGTHS)
    with pytest.raises(UserError, match="annotation file not found"):
        read_annotation(tmp_path / "missing.gff3", LENGTHS)


def test_bad_label_choices():
    with pytest.raises(UserError, match="use gene_structure"):
        label_table("genes")
    with pytest.raises(UserError, match="unknown: UTR"):
        label_table(["CDS", "UTR"])


# -- data module ---------------------------------------------------------------------------------


def datamodule(tiny_fasta, tmp_path, **kw) -> AnnotationDataModule:
    kw = {
        "seq_len": 1000,
        "fasta": str(tiny_fasta),
        "annotation": str(ASSETS / "tiny.gff3"),
        "index_cache_dir": str(tmp_path / "cache"),
        "batch_size": 2,
        **kw,
    }
    dm = AnnotationDataModule(**kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_splits_do_not_overlap_and_evaluation_scores_every_base_once(tiny_fasta, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(ASSETS / "tiny.fa", other / "sp2.fa")
    dm = datamodule(tiny_fasta, tmp_path, test_genomes={"sp2": {"fasta": str(other / "sp2.fa"), "annotation": str(ASSETS / "tiny.gff3")}})
    assert dm.eval_groups == {"val": ["val"], "test": ["test", "test_sp2"]}
    # Region splits: per sequence, train | val | test are disjoint and cover it.
    for name, length in LENGTHS.items():
        ivs = sorted((iv.start, iv.end, iv.split) for iv in dm.intervals if iv.name == name)
        assert [s for _, _, s in ivs] == ["train", "val", "test"]
        assert ivs[0][0] == 0 and ivs[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(ivs, ivs[1:], strict=False))
    train_regions = {(iv.name, iv.start, iv.end) for iv in dm.intervals if iv.split == "train"}
    for i in range(0, len(dm.datasets["train"]), 97):
        name, start = dm.datasets["train"].locate(i)
        assert any(n == name and s <= start and start + 1000 <= e for n, s, e in train_regions)

    table = label_table("gene_structure")
    flags = read_annotation(ASSETS / "tiny.gff3", LENGTHS)
    loader = dm.test_dataloader()
    scored = {0: {}, 1: {}}  # group -> name -> labels of real bases, in order
    test_windows = [w for ds in dm.datasets["test"].datasets for w in ds.windows]
    k = 0
    for batch in loader:
        for row in range(batch["tokens"].shape[0]):
            name, start, end = test_windows[k]
            k += 1
            mask = batch["padding_mask"][row]
            assert int(mask.sum()) == end - start and mask[: end - start].all()  # padding only at the tail
            labels = batch["labels"][row]
            assert (labels[~mask] == IGNORE).all()
            scored[int(batch["group"][row])].setdefault(name, []).append(labels[mask].numpy())
    # Held-out region: every base of each test interval exactly once; cross-genome: every base of the FASTA.
    for iv in (iv for iv in dm.intervals if iv.split == "test"):
        np.testing.assert_array_equal(np.concatenate(scored[0][iv.name]), table[flags[iv.name][iv.start : iv.end]])
    for name, length in LENGTHS.items():
        np.testing.assert_array_equal(np.concatenate(scored[1][name]), expand(EXPECTED[name], length))


def test_reverse_complement_reverses_the_labels(tiny_fasta, tmp_path):
    fwd = datamodule(tiny_fasta, tmp_path, rc_prob=0.0).datasets["train"]
    rev = datamodule(tiny_fasta, tmp_path, rc_prob=1.0).datasets["train"]
    for i in (0, 1500, 7000):
        a, b = fwd[i], rev[i]
        assert torch.equal(b["tokens"], reverse_complement(a["tokens"]))
        assert torch.equal(b["labels"], a["labels"].flip(0))
        assert len(set(a["labels"].tolist())) > 1 or i == 0


def test_class_frequencies_and_multilabel_batches(tiny_fasta, tmp_path):
    dm = datamodule(tiny_fasta, tmp_path, labels=["CDS", "intron"])
    assert dm.class_names == ("CDS", "intron")
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].shape == (2, 1000, 2) and batch["labels"].dtype == torch.uint8
    freq = dm.class_frequencies()
    assert freq.shape == (2,) and 0 < freq[0] < 0.2 and 0 < freq[1] < 0.5
    dm = datamodule(tiny_fasta, tmp_path)
    assert dm.class_names == GENE_STRUCTURE
    assert np.isclose(dm.class_frequencies().sum(), 1.0)


def test_datamodule_errors(tiny_fasta, tmp_path):
    with pytest.raises(UserError, match="needs its annotation"):
        AnnotationDataModule(seq_len=100, fasta=str(tiny_fasta))
    with pytest.raises(UserError, match="use gene_structure"):
        AnnotationDataModule(seq_len=100, fasta=str(tiny_fasta), annotation="x.gff", labels="cds")
    with pytest.raises(UserError, match="absent from the FASTA: NC_1"):
        bad = write(tmp_path, "NC_1\tx\texon\t1\t10\t.\t+\t.\tParent=t\n")
        datamodule(tiny_fasta, tmp_path, annotation=str(bad))
    with pytest.raises(UserError, match="as long as data.seq_len=20000"):
        datamodule(tiny_fasta, tmp_path, seq_len=20000)
