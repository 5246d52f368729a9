"""Sequence classification of sensor windows (e.g. the exercise performed in a watch recording).

Token states are mean-pooled over real tokens (padding excluded) and classified by a small head.
Reported on validation and test (held-out subjects for ``data=watch``), over every evaluation window:
accuracy and macro-F1, beside the majority-class baseline (the most frequent class of the training
windows, predicted for every window of the same evaluation set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from longseq.errors import UserError
from longseq.tasks.base import Task


class SeriesClassificationTask(Task):
    """One label per window: cross-entropy; accuracy and macro-F1 vs the majority class."""

    comparisons = (
        ("val/acc", "val/majority_acc", "higher"),
        ("val/f1_macro", "val/majority_f1_macro", "higher"),
        ("test/acc", "test/majority_acc", "higher"),
        ("test/f1_macro", "test/majority_f1_macro", "higher"),
    )

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = 2,
        head_dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        total_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        monitor: str = "val/f1_macro",
        monitor_mode: str = "max",
    ) -> None:
        super().__init__(model, lr, weight_decay, betas, warmup_steps, total_steps, min_lr_ratio)
        if num_classes < 2:
            raise UserError(
                f"classification needs labelled data with at least 2 classes (data.num_classes={num_classes}): use data=watch "
                f"or give data.recordings with a label column and data.num_classes"
            )
        self.save_hyperparameters(ignore=["model"])
        d = model.d_model
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Dropout(head_dropout), nn.Linear(d, num_classes))
        self.register_buffer("majority", torch.tensor(0), persistent=True)
        self.metrics = nn.ModuleDict()
        for s in ("val", "test"):
            for prefix in ("", "majority_"):
                self.metrics[f"{s}_{prefix}acc"] = MulticlassAccuracy(num_classes, average="micro")
                self.metrics[f"{s}_{prefix}f1_macro"] = MulticlassF1Score(num_classes, average="macro")

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "label_counts"):
            counts = dm.label_counts("train")
            if len(counts) != self.hparams.num_classes:
                raise UserError(f"the data has {len(counts)} classes, the task {self.hparams.num_classes}")
            self.majority.fill_(int(counts.argmax()))

    def forward(self, values: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``(batch, num_classes)``."""
        h = self.model(values, padding_mask)  # (batch, tokens, d_model)
        if padding_mask is None:
            pooled = h.mean(dim=1)
        else:
            w = padding_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        return self.head(pooled)

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        if "label" not in batch:
            raise UserError("the data has no labels: classification needs labelled recordings (data=watch)")
        logits = self(batch["values"], batch["padding_mask"])
        labels = batch["label"]
        loss = F.cross_entropy(logits.float(), labels)
        if split == "train":
            self.log("train/loss", loss, prog_bar=True)
            return loss
        preds = logits.argmax(dim=-1)
        majority = torch.full_like(labels, int(self.majority))
        self.metrics[f"{split}_acc"].update(preds, labels)
        self.metrics[f"{split}_f1_macro"].update(preds, labels)
        self.metrics[f"{split}_majority_acc"].update(majority, labels)
        self.metrics[f"{split}_majority_f1_macro"].update(majority, labels)
        self.log(f"{split}/loss", loss, batch_size=labels.shape[0])
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, split: str) -> None:
        for name in ("acc", "f1_macro", "majority_acc", "majority_f1_macro"):
            metric = self.metrics[f"{split}_{name}"]
            if metric.update_count:
                self.log(f"{split}/{name}", metric.compute(), prog_bar=name in ("acc", "f1_macro"))
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
