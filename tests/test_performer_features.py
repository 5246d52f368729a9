"""Performer random features: identical across ranks, restored by checkpoints, redrawn on schedule.

The features are a function of (seed, layer index, redraw count) only, so two independently built
modules (two DDP ranks) hold bitwise-identical buffers, a state_dict round trip restores them and the
next redraw, and the FeatureRedraw callback redraws at fixed optimizer steps, never in evaluation.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from longseq.attention.performer import PerformerAttention
from longseq.callbacks.performer_redraw import FeatureRedraw, redraw_all


def performer(seed: int = 0, layer_idx: int = 0, **kwargs) -> PerformerAttention:
    return PerformerAttention(
        head_dim=8, max_seq_len=64, layer_idx=layer_idx, num_features=24, seed=seed, **kwargs
    )


def buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in module.named_buffers()}


def assert_same_buffers(a: nn.Module, b: nn.Module) -> None:
    ba, bb = buffers(a), buffers(b)
    assert ba.keys() == bb.keys()
    for name in ba:
        assert torch.equal(ba[name], bb[name]), name


def test_two_ranks_draw_bitwise_identical_features():
    rank0, rank1 = performer(seed=7, layer_idx=2), performer(seed=7, layer_idx=2)
    assert_same_buffers(rank0, rank1)
    rank0.redraw_features()
    rank1.redraw_features()
    assert_same_buffers(rank0, rank1)
    assert int(rank0.redraw_count) == 1


def test_layers_seeds_and_redraws_give_different_features():
    base = performer(seed=7, layer_idx=2).projection
    assert not torch.equal(base, performer(seed=7, layer_idx=3).projection)
    assert not torch.equal(base, performer(seed=8, layer_idx=2).projection)
    redrawn = performer(seed=7, layer_idx=2)
    redrawn.redraw_features()
    assert not torch.equal(base, redrawn.projection)
    for kernel in ("softmax_hyp", "relu"):  # every variant draws the same way
        assert torch.equal(
            performer(1, 1, kernel=kernel).projection, performer(1, 1, kernel=kernel).projection
        )


def test_forward_never_redraws():
    kernel = performer()
    before = buffers(kernel)
    q = torch.randn(1, 2, 10, 8)
    kernel.train()(q, q, q).sum()
    kernel.eval()(q, q, q)
    assert torch.equal(before["projection"], kernel.projection) and int(kernel.redraw_count) == 0


def test_state_dict_restores_features_and_the_next_redraw():
    original = performer(seed=11, layer_idx=4)
    original.redraw_features()
    original.redraw_features()
    blob = io.BytesIO()
    torch.save(original.state_dict(), blob)
    blob.seek(0)

    resumed = performer(seed=999, layer_idx=4)  # built with another seed: the checkpoint decides
    assert not torch.equal(resumed.projection, original.projection)
    resumed.load_state_dict(torch.load(blob, weights_only=True))
    assert_same_buffers(original, resumed)
    q, k, v = torch.randn(3, 1, 2, 12, 8)
    assert torch.equal(original(q, k, v), resumed(q, k, v))

    original.redraw_features()
    resumed.redraw_features()
    assert_same_buffers(original, resumed)
    assert int(resumed.redraw_count) == 3


def fake_trainer(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step)


def test_callback_schedule_with_gradient_accumulation_and_eval():
    model = nn.Sequential(performer(layer_idx=0), nn.Linear(2, 2), performer(layer_idx=1))
    callback = FeatureRedraw(interval=3)
    counts = []
    for step in range(8):
        for micro_batch in range(2):  # two accumulated batches share one global_step
            callback.on_train_batch_start(fake_trainer(step), model, None, 2 * step + micro_batch)
        counts.append(int(model[0].redraw_count))
    assert counts == [0, 0, 0, 1, 1, 1, 2, 2]  # steps 3 and 6, once each, never step 0
    assert int(model[2].redraw_count) == 2 and int(model[1].weight.numel()) == 4
    model.eval()
    callback.on_train_batch_start(fake_trainer(9), model, None, 0)  # in eval: nothing happens
    assert int(model[0].redraw_count) == 2
    assert redraw_all(nn.Linear(2, 2)) == 0  # a model without random features: a no-op


class ToyPerformerModule(pl.LightningModule):
    """One Performer kernel between two linear maps, enough for the Trainer to drive the callback."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 3 * 8)
        self.attention = PerformerAttention(head_dim=8, max_seq_len=16, num_features=16, seed=3)
        self.train_counts: list[tuple[int, int]] = []  # (global_step, redraw_count) per train batch
        self.eval_counts: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.inp(x).unsqueeze(1).chunk(3, dim=-1)  # (batch, 1, seq, 8) each
        return self.attention(q, k, v).squeeze(1)

    def training_step(self, batch, batch_idx):
        self.train_counts.append((self.global_step, int(self.attention.redraw_count)))
        return self(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.eval_counts.append(int(self.attention.redraw_count))
        assert not self.training

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_callback_in_a_real_trainer_redraws_on_schedule_but_not_in_validation():
    data = DataLoader(TensorDataset(torch.randn(8, 16, 8)), batch_size=1)
    module = ToyPerformerModule()
    trainer = pl.Trainer(
        max_steps=8,
        val_check_interval=4,
        num_sanity_val_steps=1,
        limit_val_batches=2,
        callbacks=[FeatureRedraw(interval=3)],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data, data)
    assert module.train_counts == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2)]
    # sanity check (count 0), then validations after steps 4 and 8: unchanged by validating.
    assert module.eval_counts == [0, 1, 1, 2, 2]
    trainer.validate(module, data, verbose=False)
    assert int(module.attention.redraw_count) == 2


def make_trainer(max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        callbacks=[FeatureRedraw(interval=3)],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kwargs,
    )


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_resumed_run_redraws_the_same_features_as_an_uninterrupted_one(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(8, 16, 8)), batch_size=1)
    torch.manual_seed(0)
    straight = ToyPerformerModule()
    make_trainer(8).fit(straight, data)

    torch.manual_seed(0)
    first = ToyPerformerModule()
    trainer = make_trainer(3)  # stops right before the step-3 redraw
    trainer.fit(first, data)
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    resumed = ToyPerformerModule()
    resumed.attention.redraw_features()  # whatever it holds, the checkpoint wins
    make_trainer(8).fit(resumed, data, ckpt_path=tmp_path / "step3.ckpt")

    assert resumed.train_counts == [(3, 1), (4, 1), (5, 1), (6, 2), (7, 2)]
    assert_same_buffers(straight.attention, resumed.attention)
