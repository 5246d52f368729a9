"""What every task shares: AdamW + warm-up/cosine, the model config saved into checkpoints, and
the (metric, baseline) pairs the run summary compares.

A task subclasses :class:`Task`, builds its heads and metrics, and lists in ``comparisons`` the
metrics it must beat a trivial baseline on, e.g. ``("val/bpb", "val/unigram_bpb", "lower")``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import nn

from longseq.models.pretrained import MODEL_CONFIG_KEY
from longseq.tasks.optim import adamw, warmup_cosine


class Task(pl.LightningModule):
    """Base LightningModule: ``self.model`` is the encoder (an ``nn.Module`` from ``conf/model``)."""

    #: (metric, baseline metric, "lower" | "higher" is better) pairs reported in the run summary.
    comparisons: tuple[tuple[str, str, str], ...] = ()

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        total_steps: int = 1000,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        self.model = model
        self.model_config: dict[str, Any] | None = None  # set by the pipeline; saved into checkpoints
        self.optim_args = {"lr": lr, "weight_decay": weight_decay, "betas": tuple(betas)}
        self.schedule_args = {"warmup_steps": warmup_steps, "total_steps": total_steps, "min_lr_ratio": min_lr_ratio}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model_config is not None:
            checkpoint[MODEL_CONFIG_KEY] = self.model_config

    def configure_optimizers(self) -> dict[str, Any]:
        opt = adamw(self, **self.optim_args)
        sched = warmup_cosine(opt, **self.schedule_args)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
