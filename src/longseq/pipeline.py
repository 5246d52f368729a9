"""Build data, model, task and trainer from a composed Hydra config; fit; test; summarise.

Kept out of ``train.py`` so tests can run the whole pipeline in-process on a composed config.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from longseq import parallel
from longseq.callbacks.speed_monitor import SpeedMonitor, attention_backends
from longseq.errors import UserError
from longseq.models.pretrained import load_encoder

log = logging.getLogger(__name__)


def user_error_in(exc: BaseException) -> str | None:
    """The message of a :class:`UserError` (or config mistake) anywhere in ``exc``'s cause chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return str(exc)
        if isinstance(exc, OmegaConfBaseException):
            return str(exc).splitlines()[0]
        exc = exc.__cause__ or exc.__context__
    return None


def _instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a group like ``callbacks`` or ``logger``."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def attention_name(cfg: DictConfig) -> str:
    """The ``model/attention`` choice (e.g. ``performer``), or the kernel class outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("model/attention")
        if choice:
            return str(choice)
    return str(cfg.model.attention._target_).rsplit(".", 1)[-1]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by ``cfg``; returns (and writes) the run summary."""
    pl.seed_everything(cfg.seed, workers=True)
    # Each run (each job of a multirun, which shares one process) starts with dynamo's caches empty:
    # compiled kernels (flex_attention in `hybrid`) recompile per shape and grad mode, and past the
    # recompile limit fall back to eager code with different memory and tensor metadata.
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # per run, not per process (multirun jobs share one)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise UserError(f"ckpt_path={cfg.ckpt_path} does not exist (resume from <run>/checkpoints/last.ckpt)")

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model: torch.nn.Module = hydra.utils.instantiate(cfg.model, _convert_="all")
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    if cfg.get("init_from"):
        loaded = load_encoder(model, cfg.init_from, model_config)
        log.info("encoder initialised from %s (%d tensors)", cfg.init_from, len(loaded))
    task: pl.LightningModule = hydra.utils.instantiate(cfg.task, model=model, _convert_="all")
    task.model_config = model_config  # saved into checkpoints, checked when they initialise a model
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    # Processes, sequence-parallel groups, global batch -> gradient accumulation (longseq.parallel).
    layout = parallel.configure(cfg, trainer, datamodule, task)

    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    log.info("model: %.2fM parameters", sum(p.numel() for p in task.parameters()) / 1e6)

    try:
        return _fit_and_summarise(cfg, datamodule, task, trainer, callbacks, loggers, output_dir, layout)
    finally:
        _finish_wandb(loggers)


def _finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run, so the next job of a multirun starts its own (with its own group and tags)."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()


def _fit_and_summarise(
    cfg: DictConfig,
    datamodule: pl.LightningDataModule,
    task: pl.LightningModule,
    trainer: pl.Trainer,
    callbacks: list[Any],
    loggers: list[Any],
    output_dir: Path,
    layout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb else ""
    eval_ckpt = best or None
    val = trainer.validate(task, datamodule=datamodule, ckpt_path=eval_ckpt, verbose=False)[0]
    test = trainer.test(task, datamodule=datamodule, ckpt_path=eval_ckpt, verbose=False)[0] if cfg.get("test") else {}

    speed = next((c for c in callbacks if isinstance(c, SpeedMonitor)), None)
    perf = speed.summary(task.device) if speed else {}
    summary: dict[str, Any] = {
        "steps": int(trainer.global_step),
        "tokens_per_s": perf.get("tokens_per_s"),
        "step_time_s": perf.get("step_time_s"),
        "peak_mem_mib": perf.get("peak_mem_mib"),
        "params": sum(p.numel() for p in task.parameters()),
    }
    # Every validation/test metric of the evaluated checkpoint: "val/bpb" -> "val_bpb", ...
    for key, value in sorted({**val, **test}.items()):
        summary[key.replace("/", "_")] = float(value)
    summary["comparisons"] = [
        {"metric": m, "baseline": b, "better": better, "value": _metric({**val, **test}, m), "baseline_value": _metric({**val, **test}, b)}
        for m, b, better in getattr(task, "comparisons", ())
        if m in {**val, **test} and b in {**val, **test}
    ]
    summary.update(
        {
            "attention": attention_name(cfg),
            "attention_backend": attention_backends(task),
            "seq_len": int(cfg.data.seq_len),
            "device": torch.cuda.get_device_name() if trainer.strategy.root_device.type == "cuda" else "cpu",
            **(layout or {}),
            "init_from": cfg.get("init_from"),
            "best_checkpoint": best,
            "last_checkpoint": str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"),
            "output_dir": str(output_dir),
        }
    )
    if not trainer.is_global_zero:  # under DDP: one summary, written by rank 0
        return summary
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for lg in loggers:  # the backend that actually ran, next to the metrics in every tracker
        lg.log_hyperparams({"attention_backend": summary["attention_backend"], "device": summary["device"]})
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """Print the run summary as aligned ``key: value`` lines."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["", "=== longseq run summary ==="]
    lines += [f"{k:>18}: {fmt(v)}" for k, v in summary.items() if k != "comparisons"]
    for c in summary.get("comparisons", []):
        value, base = c["value"], c["baseline_value"]
        wins = value < base if c["better"] == "lower" else value > base
        verdict = "beats" if wins else "does NOT beat"
        lines.append(f"{'':>18}  {c['metric']} = {value:.4f} {verdict} the baseline {c['baseline']} = {base:.4f}")
    print("\n".join(lines), flush=True)
