"""Encoder options for long sequences: ``compile`` (torch.compile per layer) and per-layer activation
checkpointing give the same outputs and gradients as the plain encoder, with the same parameter names."""

from __future__ import annotations

import functools

import pytest
import torch

from longseq.attention.linear_elu import LinearEluAttention
from longseq.models.encoder import Encoder


def encoders(**options) -> tuple[Encoder, Encoder]:
    torch.manual_seed(0)
    factory = functools.partial(LinearEluAttention)
    plain = Encoder(32, 2, 2, factory, 64)
    other = Encoder(32, 2, 2, factory, 64, **options)
    other.load_state_dict(plain.state_dict())  # strict: same names, so checkpoints stay interchangeable
    return plain, other


def outputs_and_grads(model: Encoder, x: torch.Tensor, mask: torch.Tensor):
    y = model(x, mask)
    return y, torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), list(model.parameters()))


def test_compiled_encoder_keeps_parameter_names():
    plain, compiled = encoders(compile=True)  # compilation itself is lazy (first forward)
    assert list(plain.state_dict()) == list(compiled.state_dict())


@pytest.mark.parametrize(
    "options",
    [{"checkpoint_layers": True}, pytest.param({"checkpoint_layers": True, "compile": True}, marks=pytest.mark.slow)],
    ids=["checkpoint", "checkpoint+compile"],
)
def test_encoder_options_match_plain_encoder(options):
    plain, other = encoders(**options)
    x = torch.randn(2, 64, 32)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 40:] = False
    y0, g0 = outputs_and_grads(plain, x, mask)
    y1, g1 = outputs_and_grads(other, x, mask)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
