"""The real entry point: `python train.py` trains, writes its run folder, resumes and sweeps."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT, small_overrides

SUMMARY_KEYS = {"steps", "tokens_per_s", "peak_mem_mib", "val_loss", "val_bpb", "val_unigram_bpb"}


def run_train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_train_writes_run_folder_and_resume_continues_the_step_count(tiny_fasta, tmp_path):
    run = tmp_path / "run"
    # Validation only at the final step: ModelCheckpoint then saves `last` for the first time over the
    # last.ckpt FinalCheckpoint just wrote, which must be overwritten, not joined by a last-v1.ckpt.
    result = run_train(*small_overrides(tiny_fasta, "trainer.val_check_interval=4"), f"hydra.run.dir={run}", "logger=many")
    assert "longseq run summary" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["steps"] == 4
    assert summary["val_bpb"] > 0 and summary["val_unigram_bpb"] > 0
    assert (run / ".hydra" / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-step000004.ckpt", "last.ckpt"]
    assert (run / "csv" / "metrics.csv").is_file()
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert list((run / "wandb").glob("offline-run-*"))

    resumed = tmp_path / "resumed"
    run_train(
        *small_overrides(tiny_fasta, "trainer.max_steps=7"),
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={resumed}",
    )
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 7
    with open(resumed / "csv" / "metrics.csv") as fh:
        steps = [int(row["step"]) for row in csv.DictReader(fh) if row.get("train/loss")]
    assert steps and min(steps) >= 4  # continued from step 4, did not start over
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 7

    # A new run whose encoder starts from the pretraining checkpoint (heads new, step count from 0).
    tuned = tmp_path / "tuned"
    run_train(
        *small_overrides(tiny_fasta, "trainer.max_steps=2", "test=false"),
        f"init_from={run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tuned}",
    )
    summary = json.loads((tuned / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["init_from"].endswith("last.ckpt")


def attention_choices() -> list[str]:
    names = sorted(p.stem for p in (ROOT / "conf" / "model" / "attention").glob("*.yaml"))
    return [n for n in names if n != "flash" or torch.cuda.is_available()]


def test_multirun_trains_every_attention_mechanism(tiny_fasta, tmp_path):
    names = attention_choices()
    sweep = tmp_path / "sweep"
    run_train(
        "-m",
        *small_overrides(tiny_fasta, "trainer.max_steps=3", "test=false"),
        f"model/attention={','.join(names)}",
        f"hydra.sweep.dir={sweep}",
    )
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == len(names)
    for s in summaries:
        assert s["steps"] == 3
        assert s["val_loss"] is not None and s["val_loss"] == s["val_loss"]  # finite, not NaN


def test_multirun_jobs_get_their_own_wandb_runs_with_mechanism_tags(tiny_fasta, tmp_path):
    sweep = tmp_path / "wandb_sweep"
    run_train(
        "-m",
        *small_overrides(tiny_fasta, "trainer.max_steps=2", "test=false"),
        "model/attention=sdpa,linear_elu",
        "logger=wandb",
        f"hydra.sweep.dir={sweep}",
    )
    runs = [sorted((sweep / str(job) / "wandb").glob("offline-run-*")) for job in (0, 1)]
    assert all(len(r) == 1 for r in runs), runs  # one W&B run per job, not job 1 logging into job 0's
    assert runs[0][0].name != runs[1][0].name


def train_losses(run: Path) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv") as fh:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


def test_resume_mid_epoch_continues_the_same_stream_and_loss_curve(tiny_fasta, tmp_path):
    """A run checkpointed at step 3 and resumed sees the same windows, masks and losses as one that never stopped."""
    common = small_overrides(
        tiny_fasta, "trainer.val_check_interval=50", "test=false", "data.num_workers=1", "trainer.max_steps=6",
        # a periodic checkpoint every 3 steps, as a long run would keep against preemption
        "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.save_top_k=-1",
        "callbacks.model_checkpoint.every_n_train_steps=3",
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train(*common, f"hydra.run.dir={straight}")
    step3 = straight / "checkpoints" / "best-step000003.ckpt"
    assert step3.is_file()
    run_train(*common, f"ckpt_path={step3}", f"hydra.run.dir={resumed}")
    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(a) == [0, 1, 2, 3, 4, 5] and sorted(b) == [3, 4, 5]
    for step in (3, 4, 5):
        assert abs(a[step] - b[step]) <= 1e-5 * abs(a[step]), (step, a[step], b[step])
