"""Self-supervised masked-patch reconstruction of sensor series (pretraining for the other tasks).

A share ``mask_ratio`` of each window's real patches is hidden (their embeddings replaced by a learned
mask vector inside the encoder) and the head predicts their samples; the loss is the MSE over the
hidden, real samples of every input channel, in the normalised units of the data. The baseline
predicts the training split's per-channel mean at exactly the same positions. Masks come from seeded
generators: validation/test score the same positions in every evaluation and run, and training masks
depend on (seed, step, batch) only, so a resumed run continues exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanSquaredError

from longseq.models.patch import PatchHead
from longseq.tasks.base import Task
from longseq.tasks.mlm import stable_seed


def mask_patches(padding_mask: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool ``(batch, tokens)``: True for real tokens chosen to be hidden (each with probability ``ratio``)."""
    u = torch.rand(padding_mask.shape, generator=generator).to(padding_mask.device)
    return (u < ratio) & padding_mask


class ReconstructionTask(Task):
    """Masked-patch reconstruction: MSE on hidden patches, beside the training-mean baseline."""

    comparisons = (("val/mse", "val/mean_mse", "lower"), ("test/mse", "test/mean_mse", "lower"))

    def __init__(
        self,
        model: nn.Module,
        mask_ratio: float = 0.3,
        head_hidden: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        total_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        mask_seed: int = 1234,
        monitor: str = "val/mse",
        monitor_mode: str = "min",
    ) -> None:
        super().__init__(model, lr, weight_decay, betas, warmup_steps, total_steps, min_lr_ratio)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.save_hyperparameters(ignore=["model"])
        self.head = PatchHead(model.d_model, model.in_channels, model.patch_len, head_hidden)
        self.register_buffer("train_mean", torch.zeros(model.in_channels), persistent=True)
        self.metrics = nn.ModuleDict(
            {f"{s}_{n}": MeanSquaredError() for s in ("val", "test") for n in ("mse", "mean_mse")}
        )

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "train_mean"):
            self.train_mean.copy_(torch.as_tensor(dm.train_mean("values"), dtype=torch.float32))

    def forward(
        self, values: torch.Tensor, padding_mask: torch.Tensor | None = None, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reconstructed samples ``(batch, samples, in_channels)``."""
        return self.head(self.model(values, padding_mask, token_mask))

    def _step(self, batch: dict[str, torch.Tensor], split: str, batch_idx: int) -> torch.Tensor:
        values, padding_mask, sample_mask = batch["values"], batch["padding_mask"], batch["sample_mask"]
        if split == "train":  # seeded by (seed, step, batch): a resumed run masks as an uninterrupted one
            generator = torch.Generator().manual_seed(stable_seed(self.hparams.mask_seed, self.global_step, batch_idx))
        else:  # the same positions at every evaluation and in every run: comparable numbers
            generator = torch.Generator().manual_seed(self.hparams.mask_seed + batch_idx)
        hidden = mask_patches(padding_mask, self.hparams.mask_ratio, generator)
        pred = self(values, padding_mask, hidden)
        scored = hidden.repeat_interleave(self.model.patch_len, dim=1) & sample_mask  # (batch, samples)
        if not scored.any():
            return pred.sum() * 0.0
        p, t = pred[scored].float(), values[scored].float()  # (n, channels)
        loss = F.mse_loss(p, t)
        if split == "train":
            self.log("train/loss", loss, prog_bar=True)
            return loss
        self.metrics[f"{split}_mse"].update(p, t)
        self.metrics[f"{split}_mean_mse"].update(self.train_mean.expand_as(t).contiguous(), t)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test", batch_idx)

    def _log_epoch(self, split: str) -> None:
        for name in ("mse", "mean_mse"):
            metric = self.metrics[f"{split}_{name}"]
            if metric.update_count:
                self.log(f"{split}/{name}", metric.compute(), prog_bar=name == "mse")
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
