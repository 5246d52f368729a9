"""Masked-language-model pretraining of a DNA encoder (BERT-style masking).

Scores only real A/C/G/T positions (N and padding are never targets), over the four bases, so the
loss divided by ln 2 is an honest **bits per base**. The unigram baseline, -log2 of the training
split's base frequency, is measured on exactly the same masked validation positions.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from longseq.attention.sequence_parallel import SequenceParallel
from longseq.attention.sequence_parallel import enable as enable_sequence_parallel
from longseq.data.tokenizer import MASK, NUM_BASES
from longseq.tasks.base import Task

IGNORE = -100


def stable_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical in every process and run (unlike Python's ``hash``)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def mask_tokens(
    tokens: torch.Tensor,
    padding_mask: torch.Tensor,
    mask_prob: float,
    generator: torch.Generator | None = None,
    window: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of real bases: of the chosen ``mask_prob`` share, 80% MASK, 10% random base, 10% kept.

    Returns ``(inputs, labels)``; labels are the original base at chosen positions and ``IGNORE``
    elsewhere. Random numbers come from ``generator`` (on its device), so masks are reproducible.
    ``window = (offset, full_len)``: ``tokens`` are columns ``offset ..`` of a ``full_len`` sequence
    (a sequence-parallel shard); the random numbers are drawn for the whole sequence and sliced, so
    the shards together are masked exactly as the whole sequence would be.
    """
    shape = tokens.shape if window is None else (tokens.shape[0], window[1])
    device = generator.device if generator is not None else tokens.device

    def draw(x: torch.Tensor) -> torch.Tensor:
        return (x if window is None else x[:, window[0] : window[0] + tokens.shape[1]]).to(tokens.device)

    u = draw(torch.rand(shape, generator=generator, device=device))
    action = draw(torch.rand(shape, generator=generator, device=device))
    random_base = draw(torch.randint(0, NUM_BASES, shape, generator=generator, device=device))
    scorable = padding_mask & (tokens < NUM_BASES)
    chosen = scorable & (u < mask_prob)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(tokens, MASK), tokens)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_base, inputs)
    return inputs, labels


class MaskedLMTask(Task):
    """Masked-LM on DNA tokens with a 4-way (A/C/G/T) prediction head."""

    comparisons = (("val/bpb", "val/unigram_bpb", "lower"), ("test/bpb", "test/unigram_bpb", "lower"))
    #: Trains with one sequence split over ranks (longseq.attention.sequence_parallel): masks are drawn
    #: for the whole sequence, the loss is divided by the group's count of masked bases.
    supports_sequence_parallel = True
    sequence_parallel = None

    def __init__(
        self,
        model: nn.Module,
        mask_prob: float = 0.15,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        total_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        mask_seed: int = 1234,
    ) -> None:
        super().__init__(model, lr, weight_decay, betas, warmup_steps, total_steps, min_lr_ratio)
        self.save_hyperparameters(ignore=["model"])
        d = model.d_model
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, NUM_BASES))
        # Unigram log2-probabilities, set from the training split when fitting starts.
        self.register_buffer("unigram_log2p", torch.full((NUM_BASES,), -2.0), persistent=True)
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{name}": metric
                for split in ("val", "test")
                for name, metric in (
                    ("loss", MeanMetric()),
                    ("unigram_bpb", MeanMetric()),
                    ("acc", MulticlassAccuracy(NUM_BASES, average="micro", ignore_index=IGNORE)),
                )
            }
        )

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "base_frequencies"):
            freqs = torch.as_tensor(dm.base_frequencies(), dtype=torch.float32)
            self.unigram_log2p.copy_(freqs.log2())

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over A/C/G/T, ``(batch, seq, 4)``."""
        return self.head(self.model(tokens, padding_mask))

    def enable_sequence_parallel(self, sp: SequenceParallel | None) -> None:
        """Batches are this rank's shard of each window from now on (see the module docstring)."""
        enable_sequence_parallel(self.model, sp)
        self.sequence_parallel = sp

    def _sequence_parallel_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, chosen: torch.Tensor, sp: SequenceParallel
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's share of the window's loss, the window's loss): sum of this shard's losses over
        the group's count of masked bases; the shares add up to the single-process mean."""
        n_global = sp.all_reduce_sum(chosen.sum().to(torch.float64)).clamp_min(1)
        loss_sum = F.cross_entropy(logits[chosen].to(torch.promote_types(logits.dtype, torch.float32)), labels[chosen], reduction="sum")
        share = loss_sum / n_global.to(loss_sum.dtype)
        return share, sp.all_reduce_sum(share)

    def _step(self, batch: dict[str, torch.Tensor], split: str, batch_idx: int) -> torch.Tensor:
        tokens, padding_mask = batch["tokens"], batch["padding_mask"]
        if split == "train":
            # Seeded by (seed, step, batch): a run resumed mid-epoch masks exactly as an uninterrupted one.
            generator = torch.Generator(device=tokens.device)
            generator.manual_seed(stable_seed(self.hparams.mask_seed, self.global_step, batch_idx))
        else:  # the same masks (drawn on CPU) at every evaluation, on any device: comparable numbers
            generator = torch.Generator().manual_seed(self.hparams.mask_seed + batch_idx)
        sp = self.sequence_parallel
        window = None if sp is None else (sp.offset(tokens.shape[1]), tokens.shape[1] * sp.size)
        inputs, labels = mask_tokens(tokens, padding_mask, self.hparams.mask_prob, generator, window)
        logits = self(inputs, padding_mask)
        chosen = labels != IGNORE
        n = int(chosen.sum())
        if sp is not None and split == "train":
            share, loss = self._sequence_parallel_loss(logits, labels, chosen, sp)
            self.last_train_loss = loss
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/bpb", loss / math.log(2))
            # DDP averages gradients over every rank, but the group's ranks hold parts of ONE window,
            # whose gradient is the SUM of theirs: scale by the group size.
            return share * sp.size
        # Evaluation needs no collective here, also under sequence parallelism: the metrics are
        # weighted by each rank's masked count and summed over all ranks when they compute (at the
        # epoch's end, where every rank goes, also one whose batches had nothing to score).
        if n == 0:  # possible for a tiny, mostly-padded window: contribute nothing, keep the graph
            return logits.sum() * 0.0
        loss = F.cross_entropy(logits[chosen].to(torch.promote_types(logits.dtype, torch.float32)), labels[chosen])
        if split == "train":
            self.last_train_loss = loss.detach()
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/bpb", loss.detach() / math.log(2))
            return loss
        self.metrics[f"{split}_loss"].update(loss.detach(), weight=n)
        self.metrics[f"{split}_unigram_bpb"].update(-self.unigram_log2p[labels[chosen]].mean(), weight=n)
        self.metrics[f"{split}_acc"].update(logits.detach().argmax(-1), labels)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test", batch_idx)

    def _log_bits(self, split: str) -> None:
        """Log the epoch's loss, accuracy, bits per base and unigram baseline, then reset them.

        Under DDP every rank computes (each compute is a collective that sums the ranks' states),
        also a rank whose windows had no masked base or that got no window at all: logging the
        metric objects from the steps instead would leave such a rank out of the collective, and
        the others waiting for it forever.
        """
        loss, unigram, acc = (self.metrics[f"{split}_{k}"] for k in ("loss", "unigram_bpb", "acc"))
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if loss.update_count == 0 and not distributed:
            return
        values = {"loss": loss.compute(), "acc": acc.compute(), "unigram_bpb": unigram.compute()}
        for metric in (loss, unigram, acc):
            metric.reset()
        if not torch.isfinite(values["loss"]):  # nothing was scored on any rank (the same on all)
            return
        self.log(f"{split}/loss", values["loss"], prog_bar=True)
        self.log(f"{split}/acc", values["acc"])
        self.log(f"{split}/bpb", values["loss"] / math.log(2), prog_bar=True)
        self.log(f"{split}/unigram_bpb", values["unigram_bpb"])

    def on_validation_epoch_end(self) -> None:
        self._log_bits("val")

    def on_test_epoch_end(self) -> None:
        self._log_bits("test")
