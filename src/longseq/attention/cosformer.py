"""cosFormer attention (Qin et al., 2022): ReLU features with a cos-based locality re-weighting.

The kernel between query i and key j is ``relu(q_i)·relu(k_j) · cos(π/2 · (i − j) / M)``. With
``a_i = π·i / (2M)`` the identity ``cos(a_i − a_j) = cos a_i cos a_j + sin a_i sin a_j`` splits it into
two feature maps of linear cost, concatenated along the feature axis:

    φ(x_i) = [relu(x_i) cos a_i, relu(x_i) sin a_i]       (2·head_dim features)

so the normalised read-out of :mod:`longseq.attention.linear_core` applies unchanged.

``M`` (``horizon``) is fixed per model (default: ``max_seq_len``), not taken from the padded batch
length as the reference code does, so that a token's weights do not depend on how much padding its
batch got. Positions are indices in the (padded) sequence; padded keys are removed by the core. For
``seq <= M`` every angle lies in [0, π/2), so all features are non-negative and the weights stay
positive; a longer sequence would make weights negative, so it is refused.
"""

from __future__ import annotations

import math

import torch

from longseq.attention.base import AttentionKernel
from longseq.attention.linear_core import compute_dtype, linear_attention, recomputed
from longseq.errors import UserError


def cos_reweighted_features(x: torch.Tensor, horizon: int) -> torch.Tensor:
    """``[relu(x) cos a, relu(x) sin a]`` with ``a_i = π i / (2·horizon)``.

    ``x`` (batch, heads, seq, head_dim) -> (batch, heads, seq, 2·head_dim), in ``x``'s dtype.
    """
    seq = x.shape[-2]
    # Positions up to 2**24 are exact in fp32; the angle is computed in x's (fp32/fp64) dtype.
    angle = torch.arange(seq, device=x.device, dtype=x.dtype) * (math.pi / (2 * horizon))  # (seq,)
    relu = torch.relu(x)
    return torch.cat([relu * torch.cos(angle)[:, None], relu * torch.sin(angle)[:, None]], dim=-1)


def _cosformer_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None, horizon: int
) -> torch.Tensor:
    dtype = compute_dtype(q.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        phi_q = cos_reweighted_features(q.to(dtype), horizon)  # (batch, heads, seq, 2·head_dim)
        phi_k = cos_reweighted_features(k.to(dtype), horizon)
    return linear_attention(phi_q, phi_k, v, padding_mask, out_dtype=q.dtype)


class CosformerAttention(AttentionKernel):
    """cosFormer; ``horizon`` is the re-weighting length M (None: ``max_seq_len``); ``recompute``
    rebuilds the fp32 features in backward instead of storing them (autograd keeps only q, k, v)."""

    exact = False
    quadratic = False

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int,
        layer_idx: int = 0,
        horizon: int | None = None,
        recompute: bool = True,
    ) -> None:
        super().__init__(head_dim, max_seq_len, layer_idx)
        horizon = max_seq_len if horizon is None else int(horizon)
        if horizon <= 0:
            raise UserError(
                f"cosFormer horizon must be positive, got {horizon}; set model.attention.horizon=null "
                f"(uses max_seq_len) or a positive length"
            )
        self.horizon = horizon
        self.recompute = recompute

    def extra_repr(self) -> str:
        return f"horizon={self.horizon}, recompute={self.recompute}"

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        seq = q.shape[-2]
        if seq > self.horizon:
            raise UserError(
                f"cosFormer got a sequence of {seq} tokens but its re-weighting horizon M is {self.horizon} "
                f"(weights turn negative past M); raise model.attention.horizon (or max_seq_len) to at "
                f"least {seq}"
            )
        if self.recompute:
            return recomputed(_cosformer_attention, q, k, v, padding_mask, self.horizon)
        return _cosformer_attention(q, k, v, padding_mask, self.horizon)
