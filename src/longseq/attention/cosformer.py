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

import functools
import math

import torch

from longseq.attention.base import AttentionKernel
from longseq.attention.linear_core import chunked_linear_attention, compute_dtype
from longseq.attention.triton_linear import FeatureSpec, check_impl, resolve_impl, unsupported_reason
from longseq.errors import UserError


def cos_reweighted_features(
    x: torch.Tensor, start: int = 0, padding_mask: torch.Tensor | None = None, *, horizon: int
) -> torch.Tensor:
    """``[relu(x) cos a, relu(x) sin a]`` with ``a_i = π i / (2·horizon)``, i counted from ``start``.

    ``x`` (batch, heads, seq, head_dim) -> (batch, heads, seq, 2·head_dim) in the compute dtype (fp32,
    fp64 for fp64). ``padding_mask`` is unused (the core drops padded keys); it makes this a
    :data:`~longseq.attention.linear_core.FeatureMap` once ``horizon`` is bound.
    """
    x = x.to(compute_dtype(x.dtype))
    seq = x.shape[-2]
    # Positions up to 2**24 are exact in fp32.
    position = torch.arange(start, start + seq, device=x.device, dtype=x.dtype)
    angle = position * (math.pi / (2 * horizon))  # (seq,)
    relu = torch.relu(x)
    return torch.cat([relu * torch.cos(angle)[:, None], relu * torch.sin(angle)[:, None]], dim=-1)


class CosformerAttention(AttentionKernel):
    """cosFormer; ``horizon`` is the re-weighting length M (None: ``max_seq_len``); ``chunk_size``
    tokens per chunk; ``recompute`` rebuilds each chunk's fp32 features in backward instead of storing
    them (autograd keeps only q, k, v); ``impl``: ``auto`` (fused Triton kernels on CUDA, else
    PyTorch), ``triton`` or ``torch`` (chunk_size and recompute apply to the PyTorch path)."""

    exact = False
    quadratic = False
    supports_sequence_parallel = True  # positions are global: the core passes shard offset + index

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int,
        layer_idx: int = 0,
        horizon: int | None = None,
        chunk_size: int = 65536,
        recompute: bool = True,
        impl: str = "auto",
    ) -> None:
        super().__init__(head_dim, max_seq_len, layer_idx)
        horizon = max_seq_len if horizon is None else int(horizon)
        if horizon <= 0:
            raise UserError(
                f"cosFormer horizon must be positive, got {horizon}; set model.attention.horizon=null "
                f"(uses max_seq_len) or a positive length"
            )
        if chunk_size <= 0:
            raise UserError(
                f"cosFormer chunk_size must be positive, got {chunk_size}; set model.attention.chunk_size"
            )
        self.horizon = horizon
        self.chunk_size = chunk_size
        self.recompute = recompute
        self.impl = check_impl(impl, "cosformer")
        self.last_backend = "none"  # "triton" or "torch" once forward ran (logged as the attention backend)

    def extra_repr(self) -> str:
        return f"horizon={self.horizon}, chunk_size={self.chunk_size}, recompute={self.recompute}, impl={self.impl}"

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        seq = q.shape[-2] * (self.sequence_parallel.size if self.sequence_parallel is not None else 1)
        if seq > self.horizon:
            raise UserError(
                f"cosFormer got a sequence of {seq} tokens but its re-weighting horizon M is {self.horizon} "
                f"(weights turn negative past M); raise model.attention.horizon (or max_seq_len) to at "
                f"least {seq}"
            )
        backend = resolve_impl(self.impl, q, unsupported_reason("cos", q.shape[-1]), "cosformer")
        if backend != self.last_backend:  # nn.Module.__setattr__ costs µs of host time on every call
            self.last_backend = backend
        if backend == "triton":
            return chunked_linear_attention(
                q, k, v, padding_mask, None, None, self.chunk_size, sequence_parallel=self.sequence_parallel,
                fused=FeatureSpec("cos", horizon=self.horizon),
            )
        features = functools.partial(cos_reweighted_features, horizon=self.horizon)
        return chunked_linear_attention(
            q, k, v, padding_mask, features, features, self.chunk_size, self.recompute,
            sequence_parallel=self.sequence_parallel,
        )
