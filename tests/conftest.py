"""Shared fixtures: the repository paths, a tiny FASTA (plain and bgzip), and Hydra composition."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"
os.environ.setdefault("LONGSEQ_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")  # tests never touch the network
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def tiny_fasta(tmp_path: Path) -> Path:
    """A copy of tests/assets/tiny.fa in a fresh folder (3 sequences: 12 kb, 9 kb, 500 b)."""
    dst = tmp_path / "genome" / "tiny.fa"
    dst.parent.mkdir()
    shutil.copy(ASSETS / "tiny.fa", dst)
    return dst


@pytest.fixture
def tiny_bgzip(tmp_path: Path) -> Path:
    """The tiny FASTA compressed with BGZF (what `bgzip` writes)."""
    from Bio import bgzf

    dst = tmp_path / "bgz" / "tiny.fa.gz"
    dst.parent.mkdir()
    with bgzf.BgzfWriter(str(dst), "wb") as out:
        out.write((ASSETS / "tiny.fa").read_bytes())
    return dst


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    """``compose`` sets Hydra's process-wide HydraConfig; clear it after each test, or code that asks
    "am I inside a Hydra run, with which choices?" (e.g. the series data module's check against the
    DNA model) sees a previous test's run, depending on which tests shared the worker."""
    yield
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None


def compose(overrides: list[str], output_dir: Path | None = None):
    """Compose the real `conf/train.yaml` with overrides, as `python train.py` would (no run folder)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # lets ${hydra:...} interpolations resolve
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def small_overrides(fasta: Path, *extra: str) -> list[str]:
    """Overrides that shrink the default job to seconds on the tiny FASTA."""
    return [
        f"data.fasta={fasta}",
        "data.seq_len=256",
        "data.batch_size=4",
        "data.num_workers=0",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=2",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "task.warmup_steps=1",
        "callbacks.speed_monitor.log_every=1",
        *extra,
    ]
