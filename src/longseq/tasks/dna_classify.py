"""Sequence classification of DNA windows (one label per labelled interval) on a DNA encoder.

No CLS token: the encoder's per-base states are pooled over real bases (padding excluded) by
``pooling`` = ``mean``, ``max`` or ``mean_max`` (both, concatenated), then a small head gives class
logits. Validation and test report accuracy, macro-F1 and Matthews correlation (MCC) beside the
majority-class baseline (the training split's most frequent class predicted for every example of
the same evaluation set; its MCC is 0). ``rc_tta: true`` averages the class probabilities of each
window and of its reverse complement.

The number of classes comes from the data module at set-up (the labels may be inferred from the
file), so the head is built in :meth:`setup` unless ``num_classes`` is given.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassMatthewsCorrCoef

from longseq.data.tokenizer import reverse_complement
from longseq.errors import UserError
from longseq.tasks.base import Task

POOLINGS = ("mean", "max", "mean_max")
CLASS_NAMES_KEY = "longseq_class_names"


def pool(states: torch.Tensor, padding_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """``(batch, seq, d)`` -> ``(batch, d)`` (``(batch, 2d)`` for mean_max) over real positions only."""
    if padding_mask is None:
        padding_mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
    m = padding_mask.unsqueeze(-1)
    parts = []
    if how in ("mean", "mean_max"):
        w = m.to(states.dtype)
        parts.append((states * w).sum(1) / w.sum(1).clamp_min(1.0))
    if how in ("max", "mean_max"):
        parts.append(states.masked_fill(~m, torch.finfo(states.dtype).min).amax(1))
    return torch.cat(parts, dim=-1)


class DNAClassifyTask(Task):
    """One class per window: cross-entropy; accuracy, macro-F1 and MCC vs the majority class."""

    comparisons = tuple(
        (f"{s}/{m}", f"{s}/majority_{m}", "higher") for s in ("val", "test") for m in ("acc", "f1_macro", "mcc")
    )

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        pooling: str = "mean",
        head_dropout: float = 0.1,
        rc_tta: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        total_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        monitor: str = "val/mcc",
        monitor_mode: str = "max",
    ) -> None:
        super().__init__(model, lr, weight_decay, betas, warmup_steps, total_steps, min_lr_ratio)
        if pooling not in POOLINGS:
            raise UserError(f"task.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.save_hyperparameters(ignore=["model"])
        self.class_names: tuple[str, ...] = ()
        self.head: nn.Module | None = None
        self.register_buffer("majority", torch.tensor(0), persistent=True)
        self.metrics = nn.ModuleDict()
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        if num_classes < 2:
            raise UserError(f"classification needs at least 2 classes, got {num_classes}")
        d = self.model.d_model * (2 if self.hparams.pooling == "mean_max" else 1)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Dropout(self.hparams.head_dropout), nn.Linear(d, num_classes))
        for s in ("val", "test"):
            for prefix in ("", "majority_"):
                self.metrics[f"{s}_{prefix}acc"] = MulticlassAccuracy(num_classes, average="micro")
                self.metrics[f"{s}_{prefix}f1_macro"] = MulticlassF1Score(num_classes, average="macro")
                self.metrics[f"{s}_{prefix}mcc"] = MulticlassMatthewsCorrCoef(num_classes)
        self.head.to(self.device)
        self.metrics.to(self.device)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "class_names"):
            if self.head is None:
                raise UserError("dna_classify needs data=dna_intervals (or task.num_classes)")
            return
        n = len(dm.class_names)
        if self.head is None:
            self._build(n)
        elif self.head[-1].out_features != n:
            raise UserError(f"the data has {n} classes ({', '.join(dm.class_names)}), task.num_classes={self.head[-1].out_features}")
        self.class_names = tuple(dm.class_names)
        if stage == "fit" and hasattr(dm, "label_counts"):
            self.majority.fill_(int(dm.label_counts("train").argmax()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CLASS_NAMES_KEY] = list(self.class_names)

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``(batch, classes)``."""
        return self.head(pool(self.model(tokens, padding_mask), padding_mask, self.hparams.pooling)).float()

    def probabilities(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        p = self(tokens, padding_mask).softmax(-1)
        if self.hparams.rc_tta:
            p = (p + self(reverse_complement(tokens), padding_mask.flip(-1)).softmax(-1)) / 2
        return p

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["tokens"], batch["padding_mask"]), batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        labels = batch["label"]
        probs = self.probabilities(batch["tokens"], batch["padding_mask"])
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels)
        preds = probs.argmax(-1)
        majority = torch.full_like(labels, int(self.majority))
        for name in ("acc", "f1_macro", "mcc"):
            self.metrics[f"{split}_{name}"].update(preds, labels)
            self.metrics[f"{split}_majority_{name}"].update(majority, labels)
        self.log(f"{split}/loss", loss, batch_size=labels.shape[0])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_epoch(self, split: str) -> None:
        for name in ("acc", "f1_macro", "mcc"):
            for prefix in ("", "majority_"):
                metric = self.metrics[f"{split}_{prefix}{name}"]
                if metric.update_count:
                    self.log(f"{split}/{prefix}{name}", metric.compute(), prog_bar=not prefix and name == "mcc")
                metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
