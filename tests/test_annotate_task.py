"""The annotate task: metrics vs baselines, reverse-complement averaging, fine-tuning from an MLM checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ASSETS, ROOT, compose, small_overrides
from hydra.utils import instantiate
from omegaconf import OmegaConf

from longseq.errors import UserError
from longseq.models.dna import DNAEncoder
from longseq.pipeline import train
from longseq.tasks.annotate import AnnotateTask

sys.path.insert(0, str(ROOT / "scripts"))
import plot_annotation  # noqa: E402

SDPA = {"_target_": "longseq.attention.sdpa.SDPAttention", "_partial_": True}


def task(**kw) -> AnnotateTask:
    torch.manual_seed(0)
    model = DNAEncoder(7, 64, instantiate(SDPA), d_model=16, n_layers=1, n_heads=2)
    return AnnotateTask(model, **kw)


def test_metrics_against_perfect_and_constant_predictions():
    t = task()
    target = torch.tensor([0, 0, 0, 1, 1, 3, 3, 3, 3, 3])  # no "exon" (2) in this group
    perfect = torch.nn.functional.one_hot(target, 4).float()
    t._update(t.metrics["val"], perfect, target)
    r = t.group_results("val")
    for name in ("auroc", "auprc", "f1"):
        assert r[f"val/{name}_macro"] == pytest.approx(1.0)
        assert torch.isnan(r[f"val/{name}_exon"])  # absent class: NaN, left out of the macro
    assert r["val/baseline_auprc_CDS"] == pytest.approx(0.5)  # prevalence of CDS
    assert r["val/baseline_auprc_macro"] == pytest.approx((0.3 + 0.2 + 0.5) / 3)
    assert r["val/baseline_auroc_macro"] == 0.5
    # The majority predictor (training majority: class 0 with the default uniform prior) everywhere.
    assert r["val/majority_f1_intergenic"] == pytest.approx(2 * 0.3 / 1.3)
    assert r["val/majority_f1_CDS"] == 0.0
    assert r["val/acc"] == 1.0 and r["val/majority_acc"] == pytest.approx(0.3)

    constant = torch.tensor([0.3, 0.2, 0.0, 0.5]).expand(10, 4)
    t._update(t.metrics["val"], constant, target)
    r = t.group_results("val")
    assert r["val/auroc_macro"] == pytest.approx(0.5)
    assert r["val/auprc_macro"] == pytest.approx(r["val/baseline_auprc_macro"].item())  # a constant IS the baseline
    assert t.metrics["val"]["counts"].update_count == 0  # reset after reporting


def test_multilabel_metrics():
    t = task(labels=["CDS", "gene"])
    target = torch.tensor([[0, 0], [1, 1], [0, 1], [0, 1]])
    t._update(t.metrics["test"], target.float(), target)
    r = t.group_results("test")
    assert r["test/auprc_macro"] == pytest.approx(1.0) and r["test/f1_CDS"] == pytest.approx(1.0)
    assert r["test/baseline_auprc_gene"] == pytest.approx(0.75)


@pytest.mark.parametrize(("how", "power"), [("balanced", 1.0), ("sqrt", 0.5)])
def test_class_weights_from_training_frequencies(how, power):
    from types import SimpleNamespace

    freq = torch.tensor([0.5, 0.3, 0.15, 0.05])
    t = task(class_weights=how)
    t._trainer = SimpleNamespace(datamodule=SimpleNamespace(class_frequencies=lambda: freq.numpy()))
    t.setup("fit")
    assert torch.equal(t.train_freq, freq)
    w = t.loss_weight
    torch.testing.assert_close((w * freq).sum(), torch.tensor(1.0))  # the mean weight per base stays 1
    torch.testing.assert_close(w[3] / w[0], (freq[0] / freq[3]) ** power)


def test_reverse_complement_averaging_is_strand_symmetric():
    t = task(rc_tta=True).eval()
    tokens = torch.randint(0, 4, (2, 64))
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 50:] = False  # a padded tail
    tokens[1, 50:] = 5
    with torch.no_grad():
        p = t.probabilities(tokens, mask)
        from longseq.data.tokenizer import reverse_complement

        p_rc = t.probabilities(reverse_complement(tokens), mask.flip(-1))
    # The averaged prediction of the reverse strand is the forward one, read backwards.
    torch.testing.assert_close(p_rc.flip(1)[mask], p[mask], atol=1e-5, rtol=1e-4)
    assert torch.allclose(p.sum(-1), torch.ones(2, 64))


@pytest.mark.parametrize("head", ["conv", "mlp"])
def test_padding_never_reaches_real_bases(head):
    t = task(head=head, head_kernel=5, head_dilations=[1, 4]).eval()
    tokens = torch.randint(0, 4, (1, 64))
    mask = torch.ones(1, 64, dtype=torch.bool)
    mask[0, 40:] = False
    other = tokens.clone()
    other[0, 40:] = (other[0, 40:] + 1) % 4  # different content under the padding
    with torch.no_grad():
        torch.testing.assert_close(t(tokens, mask)[0, :40], t(other, mask)[0, :40])
    with pytest.raises(UserError, match="positive odd number"):
        task(head_kernel=4)


def annotate_overrides(tmp_path, *extra: str) -> list[str]:
    other = tmp_path / "sp2.fa"
    other.write_bytes((ASSETS / "tiny.fa").read_bytes())
    return small_overrides(
        ASSETS / "tiny.fa",
        "data=annotation",
        "task=annotate",
        f"data.annotation={ASSETS / 'tiny.gff3'}",
        "data.test_species=[]",
        f"+data.test_genomes.sp2={{fasta: {other}, annotation: {ASSETS / 'tiny.gff3'}}}",
        f"data.index_cache_dir={tmp_path / 'cache'}",
        "logger=csv",
        *extra,
    )


def test_fine_tune_from_an_mlm_checkpoint(tiny_fasta, tmp_path):
    pre = train(compose(small_overrides(tiny_fasta, "trainer.max_steps=2", "test=false", "logger=csv"), tmp_path / "pre"))
    ckpt = pre["best_checkpoint"]
    pre_state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]

    # lr=0: the fine-tuned encoder must still be exactly the pretrained one; the heads are new.
    out = tmp_path / "tuned"
    cfg = compose(annotate_overrides(tmp_path, f"init_from={ckpt}", "task.lr=0", "task.rc_tta=true"), out)
    summary = train(cfg)
    state = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    encoder = [k for k in state if k.startswith("model.")]
    assert encoder and all(torch.equal(state[k], pre_state[k]) for k in encoder)
    heads = [k for k in state if k.startswith("head.")]  # new heads, nothing taken from the MLM head
    assert heads and not any(k in pre_state and torch.equal(state[k], pre_state[k]) for k in heads)

    written = json.loads((out / "summary.json").read_text())
    assert written["init_from"] == ckpt
    compared = {c["metric"] for c in written["comparisons"]}
    assert {"val/auprc_macro", "test_sp2/auprc_macro", "test_sp2/f1_macro", "test_sp2/auroc_macro"} <= compared
    assert written["test_sp2_bases"] == 21500  # every base of the cross-genome FASTA, none dropped
    assert written["test_sp2_baseline_auroc_macro"] == 0.5

    # scripts/plot_annotation.py draws both figures from this run folder (as train.py leaves it).
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    assert plot_annotation.groups_and_classes(written) == (["test", "test_sp2"], ["CDS", "exon", "intergenic", "intron"])
    assert len(plot_annotation.metrics_figure(written).axes) == 2
    track = plot_annotation.track_figure(out, windows=1)
    assert len(track.axes) == 1 and len(track.axes[0].lines) == 4  # one probability line per class

    with pytest.raises(UserError, match="trained with attention SDPAttention, this model uses LinearEluAttention"):
        train(compose(annotate_overrides(tmp_path, f"init_from={ckpt}", "model/attention=linear_elu"), tmp_path / "bad"))


def test_train_py_reports_a_mismatched_annotation_in_one_line(tmp_path):
    bad = tmp_path / "other_names.gff3"
    bad.write_text((ASSETS / "tiny.gff3").read_text().replace("chrA\t", "NC_004353.4\t"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *annotate_overrides(tmp_path, f"data.annotation={bad}", f"hydra.run.dir={tmp_path / 'run'}")],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "absent from the FASTA: NC_004353.4" in error and "FASTA has: chrA, chrB, chrC" in error
