"""Linformer attention (Wang et al., 2020): project the sequence axis of keys and values to length k.

``out = softmax(Q (E K)ᵀ / √d) (F V)`` with ``E, F`` mapping ``seq`` tokens to ``k`` slots, then exact
softmax attention of every query against the ``k`` projected keys: O(seq·k) time and memory.
One projection serves all heads (the kernel does not know the head count; this is the paper's
head-wise sharing), and ``share_kv`` makes ``F = E``. Variants (``projection``):

- ``learned``: the paper's ``k × max_seq_len`` matrices (``E[:, :seq]`` for shorter inputs). Its size
  fixes the longest input: a longer one is refused. At 1M tokens, k = 256 it is 268M parameters.
- ``pool``: average pooling with kernel = stride = ``ceil(seq / k)``: parameter-free, any length.
- ``conv``: a strided convolution with kernel = stride = ``ceil(seq / k)``, shared by channels and
  heads, whose taps are a learned profile of ``conv_taps`` values resampled (linearly) to the stride,
  made positive by exp and normalised per segment: a learned weighted mean whose parameter count does
  not grow with ``seq``. Initialised flat, it starts as ``pool``.

Padding: padded keys and values are zeroed before projecting. ``pool`` and ``conv`` normalise each
segment by the weight of its real tokens only (padding does not dilute it) and drop slots whose
segment holds no real token from the softmax. ``learned`` mixes all positions by design: padded
positions contribute zero vectors, so the output does not depend on what padded tokens hold, but the
projected keys do depend on where the padding is.

``k > seq``: pooling uses segments of one token, i.e. ``ceil(seq / ceil(seq / k))`` = ``seq`` slots, and
the result is exact softmax attention; ``learned`` keeps its k slots (``E[:, :seq]`` is k × seq).

The sequence projection runs in fp32 with autocast off (it sums up to ``seq`` tokens per slot); the
attention against the projected keys runs through ``scaled_dot_product_attention`` in the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from longseq.attention.base import AttentionKernel
from longseq.attention.linear_core import compute_dtype, recomputed
from longseq.errors import UserError

PROJECTIONS = ("learned", "pool", "conv")


def segment_weighted_mean(
    x: torch.Tensor, keep: torch.Tensor, slots: int, taps: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of ``x`` over contiguous segments of length ``ceil(seq / slots)``, real tokens only.

    ``x`` (batch, heads, seq, dim) and ``keep`` (batch, seq) bool; ``taps`` is None (uniform weights)
    or positive weights of shape (segment,). Returns the pooled ``(batch, heads, segments, dim)`` with
    ``segments = ceil(seq / segment)`` and the slot mask ``(batch, segments)``: True where the segment
    holds a real token (empty segments pool to 0).
    """
    batch, heads, seq, dim = x.shape
    segment = math.ceil(seq / slots)
    segments = math.ceil(seq / segment)
    pad = segments * segment - seq
    weight = keep.to(x.dtype)  # (batch, seq)
    x = torch.where(keep[:, None, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        weight = F.pad(weight, (0, pad))
    x = x.reshape(batch, heads, segments, segment, dim)
    weight = weight.reshape(batch, segments, segment)
    if taps is not None:
        weight = weight * taps  # (batch, segments, segment)
    total = weight.sum(dim=-1)  # (batch, segments)
    pooled = (
        torch.einsum("bhnsd,bns->bhnd", x, weight)
        / total.clamp_min(torch.finfo(x.dtype).tiny)[:, None, :, None]
    )
    return pooled, total > 0


class LinformerAttention(AttentionKernel):
    """Linformer; options ``k`` (projected length), ``projection`` (learned|pool|conv), ``share_kv``,
    ``conv_taps`` (learned profile length of the ``conv`` projection)."""

    exact = False
    quadratic = False

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int,
        layer_idx: int = 0,
        k: int = 256,
        projection: str = "pool",
        share_kv: bool = True,
        conv_taps: int = 16,
    ) -> None:
        super().__init__(head_dim, max_seq_len, layer_idx)
        if projection not in PROJECTIONS:
            raise UserError(
                f"unknown Linformer projection {projection!r}: set model.attention.projection to one of "
                f"{', '.join(PROJECTIONS)}"
            )
        if k <= 0:
            raise UserError(f"Linformer k must be positive, got {k}; set model.attention.k")
        if projection == "conv" and conv_taps <= 0:
            raise UserError(
                f"Linformer conv_taps must be positive, got {conv_taps}; set model.attention.conv_taps"
            )
        self.k = k
        self.projection = projection
        self.share_kv = share_kv
        self.proj_k: nn.Parameter | None = None
        self.proj_v: nn.Parameter | None = None
        if projection == "learned":
            # std 1/√max_seq_len keeps a projected key O(‖k‖) (the JL scaling 1/√k would make it grow
            # like √(seq/k) and sharpen the softmax with length).
            self.proj_k = nn.Parameter(torch.randn(k, max_seq_len) / math.sqrt(max_seq_len))
            if not share_kv:
                self.proj_v = nn.Parameter(torch.randn(k, max_seq_len) / math.sqrt(max_seq_len))
        elif projection == "conv":
            # Log-weights; zeros = flat profile = plain average pooling at initialisation.
            self.proj_k = nn.Parameter(torch.zeros(conv_taps))
            if not share_kv:
                self.proj_v = nn.Parameter(torch.zeros(conv_taps))

    def extra_repr(self) -> str:
        return f"k={self.k}, projection={self.projection}, share_kv={self.share_kv}"

    def _conv_taps(self, profile: torch.Tensor, segment: int, dtype: torch.dtype) -> torch.Tensor:
        """The learned profile resampled to ``segment`` taps, positive: (segment,)."""
        log_w = F.interpolate(
            profile.to(dtype)[None, None, :], size=segment, mode="linear", align_corners=True
        )
        return torch.exp(log_w[0, 0])

    def _project(
        self, x: torch.Tensor, keep: torch.Tensor, param: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence projection of ``x`` (batch, heads, seq, dim) -> (batch, heads, slots, dim) in fp32
        (fp64 stays fp64), and the slot mask (batch, slots): True where a slot holds a real token."""
        seq = x.shape[-2]
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(compute_dtype(x.dtype))
            if self.projection == "learned":
                x = torch.where(keep[:, None, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
                projected = param[:, :seq].to(x.dtype) @ x  # (k, seq) @ (batch, heads, seq, dim)
                return projected, torch.ones(x.shape[0], self.k, dtype=torch.bool, device=x.device)
            taps = None
            if self.projection == "conv":
                taps = self._conv_taps(param, math.ceil(seq / min(self.k, seq)), x.dtype)
            return segment_weighted_mean(x, keep, min(self.k, seq), taps)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        batch, _, seq, _ = q.shape
        if self.projection == "learned" and seq > self.max_seq_len:
            raise UserError(
                f"learned Linformer projection holds {self.max_seq_len} positions but got a sequence of "
                f"{seq} tokens; raise max_seq_len (data.seq_len) to at least {seq} or use "
                f"model.attention.projection=pool (or conv), which take any length"
            )
        keep = (
            padding_mask
            if padding_mask is not None
            else torch.ones(batch, seq, dtype=torch.bool, device=q.device)
        )
        # Recomputed in backward: autograd keeps k and v (input dtype), not their fp32 copies.
        k_proj, slot_mask = recomputed(self._project, k, keep, self.proj_k)  # (batch, heads, slots, head_dim)
        v_proj, _ = recomputed(self._project, v, keep, self.proj_k if self.share_kv else self.proj_v)
        attn_mask = None
        if padding_mask is not None and self.projection != "learned":
            # An all-padding sequence keeps slot 0 (a zero key and value) so its softmax is not 0/0.
            slot_mask = slot_mask.clone()
            slot_mask[:, 0] |= ~slot_mask.any(dim=-1)
            attn_mask = slot_mask[:, None, None, :]  # (batch, 1, 1, slots)
        return F.scaled_dot_product_attention(q, k_proj.to(q.dtype), v_proj.to(q.dtype), attn_mask=attn_mask)
