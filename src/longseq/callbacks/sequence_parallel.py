"""Joins the ranks into sequence-parallel groups once the processes exist, and switches the task over.

Added by the pipeline when ``model.sequence_parallel > 1`` (see ``longseq.parallel``): at ``setup``
(after Lightning has initialised ``torch.distributed``, before the first batch) it builds the groups
of consecutive ranks (:func:`longseq.attention.sequence_parallel.new_groups`) and calls the task's
``enable_sequence_parallel``, which hands the group to every attention kernel and the encoder.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch.distributed as dist

from longseq.attention.sequence_parallel import SequenceParallel, new_groups
from longseq.errors import UserError


class SequenceParallelSetup(pl.Callback):
    """Split every sequence over groups of ``size`` consecutive ranks."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.group: SequenceParallel | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.group is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise UserError(
                    f"model.sequence_parallel={self.size} needs a distributed run: use trainer=ddp "
                    f"trainer.devices=<a multiple of {self.size}>"
                )
            self.group = new_groups(self.size)
        pl_module.enable_sequence_parallel(self.group)
