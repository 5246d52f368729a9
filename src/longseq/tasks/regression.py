"""Per-sample regression of target channels from input channels (e.g. respiration from ECG).

The head maps every token back to its ``patch_len`` samples; the loss is the MSE over real samples
in the data's normalised units. Reported on validation and test (held-out time for ``data=ecg``):
MSE and Pearson correlation over all held-out samples, beside the trivial baseline that predicts the
training split's mean (its MSE on the same samples; a constant has no correlation, so its Pearson
is 0 by convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanSquaredError, PearsonCorrCoef

from longseq.errors import UserError
from longseq.models.patch import PatchHead
from longseq.tasks.base import Task


class SeriesRegressionTask(Task):
    """Predict ``target`` ``(batch, samples, out_channels)`` from ``values``; MSE + Pearson vs the mean."""

    comparisons = (
        ("val/mse", "val/baseline_mse", "lower"),
        ("val/pearson", "val/baseline_pearson", "higher"),
        ("test/mse", "test/baseline_mse", "lower"),
        ("test/pearson", "test/baseline_pearson", "higher"),
    )

    def __init__(
        self,
        model: nn.Module,
        out_channels: int = 1,
        head_hidden: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        total_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        monitor: str = "val/mse",
        monitor_mode: str = "min",
    ) -> None:
        super().__init__(model, lr, weight_decay, betas, warmup_steps, total_steps, min_lr_ratio)
        if out_channels <= 0:
            raise UserError(
                f"this regression task needs target channels (data.out_channels > 0, got {out_channels}): "
                f"use data=ecg or set data.target_channels and data.out_channels"
            )
        self.save_hyperparameters(ignore=["model"])
        self.head = PatchHead(model.d_model, out_channels, model.patch_len, head_hidden)
        self.register_buffer("train_mean", torch.zeros(out_channels), persistent=True)
        self.metrics = nn.ModuleDict()
        for s in ("val", "test"):
            self.metrics[f"{s}_mse"] = MeanSquaredError()
            self.metrics[f"{s}_baseline_mse"] = MeanSquaredError()
            self.metrics[f"{s}_pearson"] = PearsonCorrCoef(num_outputs=out_channels)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "train_mean"):
            mean = torch.as_tensor(dm.train_mean("target"), dtype=torch.float32)
            if mean.numel() != self.train_mean.numel():
                raise UserError(
                    f"the data has {mean.numel()} target channel(s), the task was built for "
                    f"{self.train_mean.numel()} (task.out_channels follows data.out_channels)"
                )
            self.train_mean.copy_(mean)

    def forward(self, values: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted target samples ``(batch, samples, out_channels)``."""
        return self.head(self.model(values, padding_mask))

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        if "target" not in batch:
            raise UserError("the data has no target channels: set data.target_channels (data=ecg has them)")
        pred = self(batch["values"], batch["padding_mask"])
        real = batch["sample_mask"]
        if not real.any():
            return pred.sum() * 0.0
        p, t = pred[real].float(), batch["target"][real].float()  # (n, out_channels)
        loss = F.mse_loss(p, t)
        if split == "train":
            self.log("train/loss", loss, prog_bar=True)
            return loss
        self.metrics[f"{split}_mse"].update(p, t)
        self.metrics[f"{split}_baseline_mse"].update(self.train_mean.expand_as(t).contiguous(), t)
        pearson = self.metrics[f"{split}_pearson"]
        if p.shape[-1] == 1:  # torchmetrics wants 1-D inputs for a single output
            p, t = p.squeeze(-1), t.squeeze(-1)
        pearson.update(p, t)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, split: str) -> None:
        mse = self.metrics[f"{split}_mse"]
        if mse.update_count:
            self.log(f"{split}/mse", mse.compute(), prog_bar=True)
            self.log(f"{split}/baseline_mse", self.metrics[f"{split}_baseline_mse"].compute())
            self.log(f"{split}/pearson", self.metrics[f"{split}_pearson"].compute().mean(), prog_bar=True)
            self.log(f"{split}/baseline_pearson", 0.0)  # a constant prediction is uncorrelated
        for name in ("mse", "baseline_mse", "pearson"):
            self.metrics[f"{split}_{name}"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
