"""Sensor samples to tokens and back: non-overlapping patch embedding and the matching output head.

``patch_len`` samples of every channel become one token (``patch_len=1``: one token per sample, for
kernels that handle the full length); :class:`PatchHead` maps each token back to ``patch_len``
samples of ``out_channels``, for tasks with per-sample outputs (reconstruction, regression).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class PatchEmbedding(nn.Module):
    """``(batch, samples, channels)`` -> ``(batch, samples // patch_len, d_model)`` by a linear projection."""

    def __init__(self, in_channels: int, d_model: int, patch_len: int) -> None:
        super().__init__()
        if in_channels <= 0 or patch_len <= 0:
            raise ValueError(f"in_channels and patch_len must be positive, got {in_channels}, {patch_len}")
        self.in_channels = in_channels
        self.patch_len = patch_len
        self.proj = nn.Linear(patch_len * in_channels, d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        b, n, c = values.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels, got {c} (values of shape {tuple(values.shape)})")
        if n % self.patch_len:
            raise ValueError(f"{n} samples is not a multiple of patch_len={self.patch_len}")
        # sample-major inside a patch: token t holds samples t*p .. t*p + p - 1 of every channel
        return self.proj(rearrange(values, "b (t p) c -> b t (p c)", p=self.patch_len))


class PatchHead(nn.Module):
    """``(batch, tokens, d_model)`` -> ``(batch, tokens * patch_len, out_channels)``.

    ``hidden`` > 0 adds a GELU layer before the projection (a small MLP per token).
    """

    def __init__(self, d_model: int, out_channels: int, patch_len: int, hidden: int = 0) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.patch_len = patch_len
        layers: list[nn.Module] = []
        width = d_model
        if hidden > 0:
            layers += [nn.Linear(d_model, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, patch_len * out_channels))
        self.net = nn.Sequential(*layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rearrange(self.net(hidden_states), "b t (p c) -> b (t p) c", p=self.patch_len, c=self.out_channels)
