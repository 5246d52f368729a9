"""Per-base genome annotation (gene-structure segmentation) on top of a DNA encoder.

A small per-base head maps encoder states to ``gene_structure`` classes (softmax over intergenic,
intron, exon, CDS) or to multilabel features (a sigmoid each): by default a short stack of dilated
convolutions (:class:`ConvHead`, ~100 bases of local context), or ``head: mlp`` (each base alone). Evaluation scores **every real base**
of each evaluation group (``val``; ``test`` = the held-out region; ``test_<genome>`` = cross-species)
and logs, per class and macro-averaged:

- ``auroc_<class>`` / ``auprc_<class>`` (one-vs-rest, exact unless ``metric_thresholds`` bins them)
  beside the trivial baseline of a constant score (the training prevalence, or any constant):
  ``baseline_auroc_* = 0.5`` and ``baseline_auprc_<class>`` = the class's prevalence in that group
  (the average precision of a constant predictor);
- ``f1_<class>`` (argmax, or sigmoid > 0.5) beside ``majority_f1_<class>``: the majority predictor
  (the training split's most frequent class everywhere; multilabel: each label's training majority).

Macro averages use the classes present in the group. ``rc_tta: true`` averages the probabilities of
the window and of its reverse complement (run on the reverse-complemented input, flipped back);
labels are strand-agnostic, so no class changes meaning on the other strand.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
    MulticlassF1Score,
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from longseq.data.annotation import label_spec
from longseq.data.annotation_datamodule import IGNORE
from longseq.data.tokenizer import reverse_complement
from longseq.errors import UserError
from longseq.tasks.base import Task

# Positions per metric update: binned curves expand (positions x classes x thresholds) in memory.
_UPDATE_CHUNK = 1 << 16


class ClassCounts(Metric):
    """Positives per class and the number of scored positions (for prevalence and baselines)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.add_state("positives", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, onehot: torch.Tensor) -> None:  # (n, classes) of 0/1
        self.positives += onehot.long().sum(0)
        self.total += onehot.shape[0]

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.positives, self.total


class ConvHead(nn.Module):
    """Per-base head with local context: residual dilated 1-D convolutions, then a linear classifier.

    A linear-attention encoder mixes positions mostly globally, so the features a per-base label
    needs (codon periodicity, splice motifs) are local: ``kernel`` with ``dilations`` (1, 3, 9) sees
    ``1 + (kernel - 1) * sum(dilations)`` bases (105 for kernel 9). Padded positions are zeroed
    before every convolution, so padding never reaches a real base.
    """

    def __init__(
        self, d_model: int, hidden: int, classes: int, kernel: int, dilations: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise UserError(f"task.head_kernel must be a positive odd number, got {kernel}")
        self.inp = nn.Linear(d_model, hidden)
        self.convs = nn.ModuleList(
            nn.Conv1d(hidden, hidden, kernel, padding=(kernel // 2) * d, dilation=d) for d in dilations
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Dropout(dropout), nn.Linear(hidden, classes))

    def forward(self, states: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.inp(states).transpose(1, 2)  # (batch, hidden, seq)
        keep = None if padding_mask is None else padding_mask.unsqueeze(1).to(x.dtype)
        for conv in self.convs:
            h = F.gelu(x)
            x = x + conv(h if keep is None else h * keep)
        return self.out(x.transpose(1, 2))


class AnnotateTask(Task):
    """Per-base classification of gene structure; AUROC/AUPRC/F1 per class vs trivial baselines."""

    def __init__(
        self,
        model: nn.Module,
        labels: str | Sequence[str] = "gene_structure",
        head: str = "conv",
        head_hidden: int | None = None,
        head_kernel: int = 9,
        head_dilations: Sequence[int] = (1, 3, 9),
        head_dropout: float = 0.0,
        class_weights: str | None = None,
        rc_tta: bool = False,
        metric_thresholds: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        total_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        monitor: str = "val/auprc_macro",
        monitor_mode: str = "max",
    ) -> None:
        super().__init__(model, lr, weight_decay, betas, warmup_steps, total_steps, min_lr_ratio)
        if class_weights not in (None, "balanced", "sqrt"):
            raise UserError(f"task.class_weights must be null, balanced or sqrt, got {class_weights!r}")
        self.mode, self.class_names = label_spec(labels)
        self.save_hyperparameters(ignore=["model"])
        d = model.d_model
        hidden = head_hidden or d
        c = len(self.class_names)
        if head == "conv":
            self.head = ConvHead(d, hidden, c, head_kernel, tuple(head_dilations), head_dropout)
        elif head == "mlp":  # per base, no context beyond what the encoder gives
            self.head = nn.Sequential(
                nn.Linear(d, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Dropout(head_dropout), nn.Linear(hidden, c)
            )
        else:
            raise UserError(f"task.head must be conv or mlp, got {head!r}")
        # Training-split class frequencies (set in setup from the data module; saved in checkpoints).
        self.register_buffer("train_freq", torch.full((c,), 1.0 / c), persistent=True)
        self.register_buffer("loss_weight", torch.ones(c), persistent=True)
        self.metrics = nn.ModuleDict()
        self.groups: dict[str, list[str]] = {}
        self._set_groups({"val": ["val"], "test": ["test"]})

    # -- set-up ----------------------------------------------------------------------------------
    def _new_metrics(self) -> nn.ModuleDict:
        c, t = len(self.class_names), self.hparams.metric_thresholds
        if self.mode == "multiclass":
            m = {
                "auroc": MulticlassAUROC(c, average=None, thresholds=t),
                "auprc": MulticlassAveragePrecision(c, average=None, thresholds=t),
                "f1": MulticlassF1Score(c, average=None),
                "majority_f1": MulticlassF1Score(c, average=None),
                "acc": MulticlassAccuracy(c, average="micro"),
                "majority_acc": MulticlassAccuracy(c, average="micro"),
            }
        else:
            m = {
                "auroc": MultilabelAUROC(c, average=None, thresholds=t),
                "auprc": MultilabelAveragePrecision(c, average=None, thresholds=t),
                "f1": MultilabelF1Score(c, average=None),
                "majority_f1": MultilabelF1Score(c, average=None),
            }
        return nn.ModuleDict({**m, "counts": ClassCounts(c)})

    def _set_groups(self, groups: dict[str, list[str]]) -> None:
        self.groups = {stage: list(names) for stage, names in groups.items()}
        for names in self.groups.values():
            for g in names:
                if g not in self.metrics:
                    self.metrics[g] = self._new_metrics().to(self.device)
        self.comparisons = tuple(
            (f"{g}/{m}_macro", f"{g}/{b}_macro", "higher")
            for names in self.groups.values()
            for g in names
            for m, b in (("auroc", "baseline_auroc"), ("auprc", "baseline_auprc"), ("f1", "majority_f1"))
        )

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        if hasattr(dm, "class_names") and tuple(dm.class_names) != tuple(self.class_names):
            raise UserError(
                f"task.labels gives classes {list(self.class_names)}, the data {list(dm.class_names)}: "
                "set both from data.labels (task.labels: ${data.labels})"
            )
        if hasattr(dm, "eval_groups"):
            self._set_groups(dm.eval_groups)
        if stage == "fit" and hasattr(dm, "class_frequencies"):
            freq = torch.as_tensor(dm.class_frequencies(), dtype=torch.float32)
            self.train_freq.copy_(freq)
            if self.hparams.class_weights:
                # balanced: inverse frequency; sqrt: its square root (a milder push toward rare classes).
                power = 1.0 if self.hparams.class_weights == "balanced" else 0.5
                f = freq.clamp_min(1e-4)
                if self.mode == "multiclass":  # normalised so that the mean weight over bases is 1
                    w = f.pow(-power) / (f * f.pow(-power)).sum()
                else:  # BCE pos_weight: (negatives per positive) ** power
                    w = ((1 - f) / f).pow(power)
                self.loss_weight.copy_(w.clamp(max=1e3))

    # -- model -----------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-base logits ``(batch, seq, classes)``."""
        states = self.model(tokens, padding_mask)
        if isinstance(self.head, ConvHead):
            return self.head(states, padding_mask).float()
        return self.head(states).float()

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1) if self.mode == "multiclass" else logits.sigmoid()

    def probabilities(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Per-base class probabilities ``(batch, seq, classes)``, averaged over both strands if ``rc_tta``."""
        p = self._probs(self(tokens, padding_mask))
        if self.hparams.rc_tta:
            # On the reverse complement, position i of the output is position seq-1-i of the input
            # (padding moves to the front, so the mask is flipped too): flip back, then average.
            p_rc = self._probs(self(reverse_complement(tokens), padding_mask.flip(-1))).flip(1)
            p = (p + p_rc) / 2
        return p

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "multiclass":
            labels = labels.masked_fill(~padding_mask, IGNORE)
            weight = self.loss_weight if self.hparams.class_weights else None
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), weight=weight, ignore_index=IGNORE)
        pos_weight = self.loss_weight if self.hparams.class_weights else None
        per = F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=pos_weight, reduction="none")
        m = padding_mask.unsqueeze(-1).to(per.dtype)
        return (per * m).sum() / (m.sum() * per.shape[-1]).clamp_min(1.0)

    # -- steps -----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["tokens"], batch["padding_mask"])
        loss = self._loss(logits, batch["labels"], batch["padding_mask"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        tokens, mask, labels = batch["tokens"], batch["padding_mask"], batch["labels"]
        probs = self.probabilities(tokens, mask)
        n = max(int(mask.sum()), 1)
        if self.mode == "multiclass":
            loss = -torch.log(probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1).clamp_min(1e-12))
            loss = loss[mask].mean()
        else:
            loss = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), labels.float(), reduction="none")[mask].mean()
        self.log(f"{stage}/loss", loss, batch_size=n)
        groups = batch.get("group", torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device))
        names = self.groups[stage]
        for g in groups.unique().tolist():
            rows = groups == g
            sel = mask & rows.unsqueeze(1)
            self._update(self.metrics[names[g]], probs[sel], labels[sel])

    @torch.no_grad()
    def _update(self, metrics: nn.ModuleDict, probs: torch.Tensor, target: torch.Tensor) -> None:
        """``probs`` ``(n, classes)``, ``target`` ``(n,)`` classes or ``(n, classes)`` 0/1."""
        c = len(self.class_names)
        if self.mode == "multiclass":
            majority = torch.full_like(target, int(self.train_freq.argmax()))
            onehot = F.one_hot(target, c)
        else:
            target = target.long()
            majority = (self.train_freq > 0.5).long().expand_as(target)
            onehot = target
        metrics["counts"].update(onehot)
        for lo in range(0, probs.shape[0], _UPDATE_CHUNK):
            p, t = probs[lo : lo + _UPDATE_CHUNK], target[lo : lo + _UPDATE_CHUNK]
            metrics["auroc"].update(p, t)
            metrics["auprc"].update(p, t)
        pred = probs.argmax(-1) if self.mode == "multiclass" else probs
        metrics["f1"].update(pred, target)
        metrics["majority_f1"].update(majority if self.mode == "multiclass" else majority.float(), target)
        if "acc" in metrics:
            metrics["acc"].update(pred, target)
            metrics["majority_acc"].update(majority, target)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def group_results(self, group: str) -> dict[str, torch.Tensor]:
        """Per-class and macro metrics of one evaluation group (empty if it saw no data), then reset.

        A class counts where it has both positives and negatives in the group; elsewhere its values
        are NaN and it is left out of the macro averages (of the model and of the baselines alike).
        """
        metrics = self.metrics[group]
        if metrics["counts"].update_count == 0:
            return {}
        positives, total = metrics["counts"].compute()
        positives = positives.float()
        present = (positives > 0) & (positives < total)
        prevalence = positives / total.clamp_min(1)
        with warnings.catch_warnings():  # absent classes: torchmetrics warns, we report NaN instead
            warnings.filterwarnings("ignore", message=".*(positive|negative) samples.*")
            values = {name: metrics[name].compute().float() for name in ("auroc", "auprc", "f1", "majority_f1")}
        values["baseline_auprc"] = prevalence  # average precision of a constant score = the class's prevalence
        out: dict[str, torch.Tensor] = {}
        for name, per_class in values.items():
            per_class = torch.where(present, per_class.to(present.device), torch.nan)
            for cls, v in zip(self.class_names, per_class, strict=True):
                out[f"{group}/{name}_{cls}"] = v
            out[f"{group}/{name}_macro"] = per_class[present].mean() if present.any() else per_class.new_tensor(torch.nan)
        out[f"{group}/baseline_auroc_macro"] = out[f"{group}/auroc_macro"].new_tensor(0.5 if present.any() else torch.nan)
        if "acc" in metrics:
            out[f"{group}/acc"] = metrics["acc"].compute()
            out[f"{group}/majority_acc"] = metrics["majority_acc"].compute()
        out[f"{group}/bases"] = total.float()
        for m in metrics.values():
            m.reset()
        return out

    def _log_group(self, group: str) -> None:
        out = self.group_results(group)
        if out:
            shown = f"{group}/auprc_macro"
            self.log(shown, out.pop(shown), prog_bar=True)
            self.log_dict(out)

    def on_validation_epoch_end(self) -> None:
        for g in self.groups["val"]:
            self._log_group(g)

    def on_test_epoch_end(self) -> None:
        for g in self.groups["test"]:
            self._log_group(g)
