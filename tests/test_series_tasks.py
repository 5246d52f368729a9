"""Sensor models and tasks: patch embedding/head, baselines, sources (offline), and a few steps of
each task through the real entry point (reconstruct -> ecg_to_resp with init_from, classify)."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose
from hydra.utils import instantiate

from longseq.data import series_sources
from longseq.errors import UserError
from longseq.models.patch import PatchEmbedding, PatchHead
from longseq.models.series import SeriesEncoder
from longseq.pipeline import train, user_error_in
from longseq.tasks.classification import SeriesClassificationTask
from longseq.tasks.reconstruct import ReconstructionTask, mask_patches
from longseq.tasks.regression import SeriesRegressionTask


def sdpa():
    return instantiate({"_target_": "longseq.attention.sdpa.SDPAttention", "_partial_": True})


def test_patch_embedding_and_head_map_samples_to_tokens_and_back():
    emb = PatchEmbedding(in_channels=2, d_model=8, patch_len=5)
    x = torch.randn(3, 40, 2)
    assert emb(x).shape == (3, 8, 8)
    # token t sees exactly samples 5t..5t+4: changing sample 7 changes token 1 only
    y = x.clone()
    y[:, 7] += 1.0
    changed = (emb(y) - emb(x)).abs().sum(-1).sum(0) > 0
    assert changed.tolist() == [False, True] + [False] * 6
    head = PatchHead(d_model=8, out_channels=3, patch_len=5, hidden=16)
    assert head(torch.randn(3, 8, 8)).shape == (3, 40, 3)
    per_sample = SeriesEncoder(2, 64, 1, sdpa(), d_model=16, n_layers=1, n_heads=2)  # one token per sample
    assert per_sample(torch.randn(2, 64, 2)).shape == (2, 64, 16)
    with pytest.raises(ValueError, match="multiple of patch_len"):
        emb(torch.randn(1, 41, 2))
    million = SeriesEncoder(1, 1 << 20, 256, sdpa(), d_model=16, n_layers=1, n_heads=2)  # 1M samples -> 4096 tokens
    with torch.no_grad():
        assert million(torch.randn(1, 1 << 20, 1)).shape == (1, 4096, 16)


def test_series_encoder_ignores_padded_patches():
    torch.manual_seed(0)
    model = SeriesEncoder(1, 80, 8, sdpa(), d_model=16, n_layers=2, n_heads=2).double().eval()
    x = torch.randn(1, 80, 1, dtype=torch.double)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    y = x.clone()
    y[:, 48:] = 100.0  # garbage in the padded patches
    a, b = model(x, mask), model(y, mask)
    torch.testing.assert_close(a[:, :6], b[:, :6])


@pytest.mark.parametrize("attention", sorted(p.stem for p in (ROOT / "conf" / "model" / "attention").glob("*.yaml")))
def test_every_attention_mechanism_trains_the_series_encoder(attention):
    if attention == "flash" and not torch.cuda.is_available():
        pytest.skip("the FLASH backend needs a CUDA GPU")
    cfg = compose(["data=series_file", "data.path=x.npy", "data.rate=100", "data.seq_len=2000", "data.patch_len=10",
                   "data.in_channels=3", "model=series", f"model/attention={attention}", "model.d_model=16",
                   "model.n_heads=4", "model.n_layers=1", *(["model.attention.window=8"] if attention == "hybrid" else [])],
                  Path("/tmp/unused"))
    model = instantiate(cfg.model, _convert_="all")
    values = torch.randn(2, 2000, 3)
    mask = torch.ones(2, 200, dtype=torch.bool)
    mask[1, 150:] = False
    out = model(values, mask)
    out[mask].pow(2).mean().backward()
    assert out.shape == (2, 200, 16) and torch.isfinite(out[mask]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def no_log(task):
    task.log = lambda *a, **k: None
    return task


def test_reconstruction_scores_hidden_real_samples_against_the_mean_baseline():
    torch.manual_seed(0)
    task = no_log(ReconstructionTask(SeriesEncoder(2, 40, 4, sdpa(), d_model=16, n_layers=1, n_heads=2), mask_ratio=0.5))
    pad = torch.ones(4, 10, dtype=torch.bool)
    pad[:, 8:] = False
    hidden = mask_patches(pad, 0.5, torch.Generator().manual_seed(3))
    assert not hidden[~pad].any() and hidden.any()
    sample_mask = pad.repeat_interleave(4, dim=1)
    batch = {"values": torch.randn(4, 40, 2), "padding_mask": pad, "sample_mask": sample_mask}
    task._step(batch, "val", 0)
    mse, base = task.metrics["val_mse"].compute(), task.metrics["val_mean_mse"].compute()
    gen = torch.Generator().manual_seed(task.hparams.mask_seed + 0)
    scored = mask_patches(pad, 0.5, gen).repeat_interleave(4, dim=1) & sample_mask
    assert torch.isclose(base, batch["values"][scored].pow(2).mean())  # mean 0 predicted on the same samples
    assert mse > 0


def test_regression_baseline_and_pearson():
    task = no_log(SeriesRegressionTask(SeriesEncoder(1, 20, 5, sdpa(), d_model=8, n_layers=1, n_heads=2), out_channels=1))
    task.train_mean.fill_(0.5)
    target = torch.randn(2, 20, 1)
    real = torch.ones(2, 20, dtype=torch.bool)
    real[1, 10:] = False
    task.forward = lambda values, padding_mask=None: 2.0 * target + 1.0  # perfectly correlated, wrong scale
    task._step({"values": torch.randn(2, 20, 1), "target": target, "sample_mask": real, "padding_mask": real[:, ::5]}, "val")
    t = target[real]
    assert torch.isclose(task.metrics["val_pearson"].compute(), torch.tensor(1.0), atol=1e-5)
    assert torch.isclose(task.metrics["val_baseline_mse"].compute(), (t - 0.5).pow(2).mean())
    assert torch.isclose(task.metrics["val_mse"].compute(), (t + 1.0).pow(2).mean())
    with pytest.raises(UserError, match="target channels"):
        SeriesRegressionTask(SeriesEncoder(1, 20, 5, sdpa(), d_model=8, n_layers=1, n_heads=2), out_channels=0)


def test_classification_majority_baseline():
    task = no_log(SeriesClassificationTask(SeriesEncoder(1, 20, 5, sdpa(), d_model=8, n_layers=1, n_heads=2), num_classes=3))
    task.majority.fill_(2)
    labels = torch.tensor([2, 2, 0, 1])
    task._step({"values": torch.randn(4, 20, 1), "padding_mask": torch.ones(4, 4, dtype=torch.bool), "label": labels}, "test")
    assert torch.isclose(task.metrics["test_majority_acc"].compute(), torch.tensor(0.5))
    # F1 of class 2 = 2 * 0.5 * 1 / 1.5; classes 0 and 1 score 0: macro = (2/3) / 3
    assert torch.isclose(task.metrics["test_majority_f1_macro"].compute(), torch.tensor(2 / 9), atol=1e-6)


def fake_wheel(folder: Path, name: str, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-py3-none-any.whl", "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)


def test_sources_extract_the_recordings_without_importing_the_packages(tmp_path):
    """The fetchers on small stand-in wheels (the real ones are downloaded by `make data`, not in tests)."""
    lines = ["# OpenSignals Text File Format. Version 1", "# {}", "# EndOfHeader"]
    lines += [f"{i % 16}\t1\t0\t1\t1\t{500 + i}\t{300 + 2 * i}\t" for i in range(50)]
    fake_wheel(tmp_path / "ecg", "biopeaks-1.4.1", {"biopeaks/tests/testdata/OSmontage0J.txt": "\n".join(lines).encode()})
    src = series_sources.fetch("ecg", tmp_path)
    arr = np.load(src.path, mmap_mode="r")
    assert src.columns == ["resp", "ecg"] and src.rate == 1000.0 and arr.shape == (50, 2)
    assert arr[3].tolist() == [503.0, 306.0]

    rng = np.random.default_rng(0)
    d = {
        "X": [rng.standard_normal((n, 6)) for n in (5, 7, 4)],
        "y": np.array([0, 2, 1]),
        "subject": np.array([3, 1, 3]),
        "side": np.array([1.0, 0.0, 1.0]),
        "X_labels": ["ax", "ay", "az", "wx", "wy", "wz"],
        "y_labels": ["A", "B", "C"],
    }
    buf = io.BytesIO()
    np.save(buf, np.array(d, dtype=object), allow_pickle=True)
    fake_wheel(tmp_path / "watch", "seglearn-1.2.5", {"seglearn/data/watch_dataset.npy": buf.getvalue()})
    src = series_sources.fetch("watch", tmp_path)
    arr = np.load(src.path, allow_pickle=False)  # plain array now: no pickle needed to read it
    assert arr.shape == (16, 6) and src.classes == ["A", "B", "C"] and src.rate == 50.0
    rows = list(csv.DictReader(open(src.recordings)))
    assert [(r["start"], r["stop"], r["label"], r["group"]) for r in rows] == [
        ("0", "5", "0", "subject03"), ("5", "12", "2", "subject01"), ("12", "16", "1", "subject03")
    ]
    np.testing.assert_allclose(arr[5:12], d["X"][1], rtol=1e-6)
    with pytest.raises(UserError, match="unknown sensor data source"):
        series_sources.fetch("eeg", tmp_path)
    assert pickle  # the module is imported for the documented fallback error type


def test_real_data_configs_compose():
    for data, task in (("ecg", "ecg_to_resp"), ("ecg", "reconstruct"), ("watch", "classify")):
        cfg = compose([f"data={data}", "model=series", f"task={task}"], Path("/tmp/unused"))
        assert cfg.model.max_samples == cfg.data.seq_len and cfg.model.patch_len == cfg.data.patch_len
        assert cfg.callbacks.model_checkpoint.monitor == cfg.task.monitor
    assert compose([]).callbacks.model_checkpoint.monitor == "val/bpb"  # the DNA default is unchanged
    for overrides, message in ((["data=ecg"], "add model=series"), (["data=watch", "model=series"], "choose a series task")):
        with pytest.raises(Exception) as info:  # noqa: B017 - Hydra wraps it; the pipeline prints the cause
            instantiate(compose(overrides, Path("/tmp/unused")).data, _convert_="all")
        assert message in (user_error_in(info.value) or "")


def synthetic_recordings(tmp_path: Path) -> tuple[Path, Path]:
    """One 2-channel recording (input: a noisy sine, target: a smooth function of it) and a labelled set."""
    t = np.arange(6000) / 100.0
    x = np.sin(2 * np.pi * 0.7 * t) + 0.1 * np.random.default_rng(0).standard_normal(t.size)
    y = np.convolve(x, np.ones(25) / 25, mode="same")
    np.save(tmp_path / "pair.npy", np.stack([x, y], 1).astype(np.float32))
    rng = np.random.default_rng(1)
    parts, rows, start = [], [], 0
    for i in range(24):
        n = 150 + 10 * (i % 5)
        parts.append((rng.standard_normal((n, 2)) + (i % 3)).astype(np.float32))
        rows.append(f"r{i},{start},{start + n},{i % 3},s{i // 4}")
        start += n
    np.save(tmp_path / "labelled.npy", np.concatenate(parts))
    (tmp_path / "labelled.csv").write_text("name,start,stop,label,group\n" + "\n".join(rows) + "\n")
    return tmp_path / "pair.npy", tmp_path / "labelled.npy"


SMALL = [
    "model=series",
    "model.d_model=16",
    "model.n_layers=1",
    "model.n_heads=2",
    "data.num_workers=0",
    "data.batch_size=4",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "task.warmup_steps=1",
    "callbacks.speed_monitor.log_every=1",
]


def run_train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )


def test_each_task_trains_and_reconstruct_initialises_the_others(tmp_path):
    """reconstruct through `python train.py`; then ecg_to_resp (init_from) and classify in-process."""
    pair, labelled = synthetic_recordings(tmp_path)
    file_args = [f"data.path={pair}", "data.rate=100", "data.seq_len=400", "data.patch_len=20", "data.stride=50",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.channels=[0]"]
    pre = tmp_path / "pre"
    r = run_train("data=series_file", "task=reconstruct", *file_args, *SMALL, f"hydra.run.dir={pre}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = json.loads((pre / "summary.json").read_text())
    assert summary["steps"] == 3 and {"val_mse", "val_mean_mse", "test_mse", "test_mean_mse"} <= summary.keys()
    assert [c["metric"] for c in summary["comparisons"]] == ["val/mse", "test/mse"]
    assert list((pre / "checkpoints").glob("best-*.ckpt"))  # the checkpoint callback watched val/mse
    ckpt = pre / "checkpoints" / "last.ckpt"

    regression = ["data=series_file", "task=ecg_to_resp", *file_args, "data.target_channels=[1]", "data.out_channels=1",
                  *SMALL, "logger=csv"]
    summary = train(compose([*regression, f"init_from={ckpt}"], tmp_path / "reg"))
    assert summary["init_from"] == str(ckpt) and summary["steps"] == 3
    assert {"test_mse", "test_baseline_mse", "test_pearson", "test_baseline_pearson"} <= summary.keys()
    assert len(summary["comparisons"]) == 4

    # a pretrained encoder with another patch length does not fit: a clear error
    with pytest.raises(UserError, match="does not match this encoder.*embed.proj.weight"):
        train(compose([*regression, "data.patch_len=40", f"init_from={ckpt}"], tmp_path / "bad"))

    classify = ["data=series_file", "task=classify", f"data.path={labelled}", f"data.recordings={tmp_path / 'labelled.csv'}",
                "data.rate=50", "data.in_channels=2", "data.num_classes=3", "data.split_by=group", "data.val_fraction=0.2",
                "data.test_fraction=0.2", "data.seq_len=200", "data.patch_len=10", "data.pad_short=true", *SMALL, "logger=csv"]
    summary = train(compose(classify, tmp_path / "cls"))
    assert {"test_acc", "test_f1_macro", "test_majority_acc", "test_majority_f1_macro"} <= summary.keys()
    assert len(summary["comparisons"]) == 4 and summary["test_majority_acc"] > 0

    with pytest.raises(UserError, match="is longer than recording"):
        train(compose(["data=series_file", "task=reconstruct", *file_args, "data.seq_len=8000", *SMALL], tmp_path / "long"))
