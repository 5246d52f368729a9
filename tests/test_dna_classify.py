"""dna_classify: labelled-interval files (BED/TSV), their errors, windows, pooling, a pipeline run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose, small_overrides

from longseq.data.labelled_intervals import read_labelled_intervals
from longseq.data.labelled_intervals_datamodule import LabelledIntervalDataModule
from longseq.errors import UserError
from longseq.pipeline import train
from longseq.tasks.dna_classify import pool

LENGTHS = {"chrA": 12000, "chrB": 9000, "chrC": 500}


def write(tmp_path, text: str, name: str = "labels.tsv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def labels_file(tmp_path, with_split: bool = True):
    """200-bp intervals every 300 bp on chrA and chrB, classes alternating promoter/enhancer/other."""
    lines = ["chrom\tstart\tend\tname\tlabel" + ("\tsplit" if with_split else "")]
    k = 0
    for name, length in (("chrA", 12000), ("chrB", 9000)):
        for start in range(0, length - 200, 300):
            split = "train" if start < 0.7 * length else "val" if start < 0.85 * length else "test"
            row = [name, str(start), str(start + 200), f"iv{k}", ("promoter", "enhancer", "other")[k % 3]]
            lines.append("\t".join(row + ([split] if with_split else [])))
            k += 1
    return write(tmp_path, "\n".join(lines) + "\n")


def test_tsv_with_header_bed_without_and_splits_by_region(tmp_path):
    intervals, classes = read_labelled_intervals(labels_file(tmp_path), LENGTHS)
    assert classes == ("enhancer", "other", "promoter")  # inferred from training, sorted
    assert {iv.split for iv in intervals} == {"train", "val", "test"}
    bed = write(tmp_path, "# promoters\nchrA\t100\t300\tpos\nchrA\t11000\t11200\tneg\nchrB\t50\t80\tneg\nchrA\t400\t500\tpos\n", "x.bed")
    intervals, classes = read_labelled_intervals(bed, LENGTHS, classes=["neg", "pos"])
    assert classes == ("neg", "pos")
    # No split column: the region (train | val | test, 80/10/10 of each sequence) of the midpoint.
    assert [(iv.start, iv.split) for iv in intervals] == [(100, "train"), (11000, "test"), (50, "train"), (400, "train")]


@pytest.mark.parametrize(
    ("text", "kw", "message"),
    [
        ("chrom\tstart\tend\tscore\nchrA\t1\t5\t0\n", {}, r"header lacks column\(s\) label"),
        ("chrA\t1\t5\n", {}, "expected at least 4 tab-separated columns"),
        ("chrA\tx\t5\tpos\n", {}, "start/end must be integers"),
        ("chrA\t1\t5\tpos\tholdout\n", {}, "split is 'holdout'"),
        ("chrA\t11990\t12010\tpos\n", {}, r"chrA:11990-12010 lies outside the sequence \(length 12000\)"),
        ("chr4\t1\t5\tpos\nNC_1\t1\t5\tneg\nchr4\t9\t15\tneg\n", {}, r"absent from the FASTA: NC_1 \(1 intervals\), chr4 \(2 intervals\)"),
        ("chrA\t1\t5\tpos\nchrA\t9\t15\tTSS\n", {"classes": ["pos", "neg"]}, r"labels outside data.classes=\['pos', 'neg'\]: TSS \(1 intervals, first at line 2\)"),
        ("chrA\t1\t5\tpos\ttrain\nchrA\t9\t15\tneg\ttrain\nchrB\t1\t5\tenh\ttest\n", {}, "enh appear in validation/test but never in training"),
        ("chrA\t1\t500\tpos\ttrain\nchrA\t400\t600\tneg\ttest\n", {}, "overlap across splits"),
        ("chrA\t1\t5\tpos\ttrain\nchrA\t9\t15\tneg\n", {}, "some intervals have a split and some do not"),
    ],
)
def test_bad_label_files(tmp_path, text, kw, message):
    with pytest.raises(UserError, match=message):
        read_labelled_intervals(write(tmp_path, text), LENGTHS, **kw)


def datamodule(tiny_fasta, tmp_path, labels, **kw) -> LabelledIntervalDataModule:
    dm = LabelledIntervalDataModule(
        seq_len=kw.pop("seq_len", 512), intervals=str(labels), fasta=str(tiny_fasta),
        index_cache_dir=str(tmp_path / "cache"), batch_size=4, **kw,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_center_and_interval_windows(tiny_fasta, tmp_path):
    labels = write(tmp_path, "chrA\t5000\t5200\tpos\ttrain\nchrA\t11900\t12000\tneg\ttrain\nchrC\t10\t20\tneg\ttest\n")
    dm = datamodule(tiny_fasta, tmp_path, labels, rc_prob=0.0)
    ds = dm.datasets["train"]
    assert ds.span(0) == ("chrA", 5100 - 256, 5100 + 256)  # centred on the midpoint
    assert ds.span(1) == ("chrA", 12000 - 512, 12000)  # shifted to stay inside the sequence
    item = dm.datasets["test"][0]  # chrC is 500 bases: the whole sequence, padded
    assert dm.datasets["test"].span(0) == ("chrC", 0, 500)
    assert item["padding_mask"].sum() == 500 and item["tokens"][500:].eq(5).all()
    assert item["label"] == dm.class_names.index("neg") and dm.label_counts("train").tolist() == [1, 1]

    dm = datamodule(tiny_fasta, tmp_path, labels, window="interval")
    item = dm.datasets["train"][0]
    assert item["padding_mask"].sum() == 200
    with pytest.raises(UserError, match="1 intervals are longer than data.seq_len=150"):
        datamodule(tiny_fasta, tmp_path, labels, window="interval", seq_len=150)


def test_pooling_ignores_padding():
    states = torch.randn(2, 6, 3)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    mean = pool(states, mask, "mean")
    torch.testing.assert_close(mean[1], states[1, :4].mean(0))
    states[1, 4:] = 1e6  # padded positions must not leak into any pooling
    torch.testing.assert_close(pool(states, mask, "max")[1], states[1, :4].amax(0))
    assert pool(states, mask, "mean_max").shape == (2, 6)


def test_dna_classify_trains_and_reports_against_the_majority(tiny_fasta, tmp_path):
    labels = labels_file(tmp_path)
    out = tmp_path / "run"
    cfg = compose(
        small_overrides(
            tiny_fasta, "data=dna_intervals", "task=dna_classify", f"data.intervals={labels}",
            f"data.index_cache_dir={tmp_path / 'cache'}", "task.pooling=mean_max", "task.rc_tta=true", "logger=csv",
        ),
        out,
    )
    summary = train(cfg)
    written = json.loads((out / "summary.json").read_text())
    for key in ("val_acc", "val_f1_macro", "val_mcc", "test_mcc", "test_majority_mcc", "test_majority_acc"):
        assert key in written, key
    assert written["test_majority_mcc"] == 0.0
    assert {c["metric"] for c in summary["comparisons"]} >= {"val/mcc", "test/f1_macro", "test/acc"}
    ckpt = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["longseq_class_names"] == ["enhancer", "other", "promoter"]
