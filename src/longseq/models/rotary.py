"""Rotary position embedding (RoPE): relative positions at any sequence length, no learned table.

Angles are computed in float32 from integer positions, so position 1,000,000 is as precise as
position 10; the rotation is then applied in the activations' dtype.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Produces ``(cos, sin)`` tables of shape ``(seq, head_dim // 2)`` for :func:`apply_rotary`."""

    def __init__(self, head_dim: int, base: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for positions ``offset .. offset + seq_len - 1`` (a sequence-parallel shard starts
        at its global offset)."""
        pos = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(pos, self.inv_freq.to(device))  # (seq, head_dim/2)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x[..., :d/2], x[..., d/2:])`` of ``x`` ``(batch, heads, seq, head_dim)``."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
