"""Redraw random-feature attention (Performer) features on a fixed optimizer-step schedule.

Every module with a ``redraw_features()`` method (see
:class:`longseq.attention.performer.PerformerAttention`) is asked to redraw at the start of the first
training batch of every optimizer step that is a positive multiple of ``interval``. The features are
drawn from (seed, layer index, redraw count) and the count lives in a buffer, so all DDP ranks redraw
the same features and a run resumed from a checkpoint continues the same sequence of draws. Nothing
happens in validation, test or prediction: only ``on_train_batch_start`` acts. For other kernels the
callback is a no-op.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import nn

from longseq.errors import UserError


def redraw_all(module: nn.Module) -> int:
    """Call ``redraw_features()`` on every submodule that has it; returns how many redrew."""
    count = 0
    for sub in module.modules():
        redraw = getattr(sub, "redraw_features", None)
        if callable(redraw):
            redraw()
            count += 1
    return count


class FeatureRedraw(pl.Callback):
    """Redraw random features every ``interval`` optimizer steps (never at step 0, never in eval)."""

    def __init__(self, interval: int) -> None:
        if interval <= 0:
            raise UserError(
                f"FeatureRedraw interval must be a positive number of steps, got {interval}; set "
                f"callbacks.feature_redraw.interval or remove it with ~callbacks.feature_redraw"
            )
        self.interval = interval
        # With gradient accumulation several batches share one global_step: redraw once per step.
        self._last_step: int | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step <= 0 or step % self.interval or step == self._last_step or not pl_module.training:
            return
        self._last_step = step
        redraw_all(pl_module)
