"""Writes ``last.ckpt`` at the step training stops, while the data loader's position is still live.

``ModelCheckpoint`` saves ``last`` only at validation or epoch ends, and a checkpoint written after
``fit`` returns no longer carries the StatefulDataLoader's position. Saving from the last training
batch gives a ``last.ckpt`` that resumes mid-epoch exactly (same windows, same masks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class FinalCheckpoint(pl.Callback):
    """Save ``<dirpath>/last.ckpt`` when ``trainer.max_steps`` is reached or training is told to stop."""

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = 0 < trainer.max_steps <= trainer.global_step
        if done or trainer.should_stop:
            trainer.save_checkpoint(self.path)
