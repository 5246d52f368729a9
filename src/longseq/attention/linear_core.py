"""Non-causal normalised linear attention given feature maps, shared by the linear kernels.

For non-negative feature maps φ the kernel is

    out_i = Σ_j (φ(q_i)·φ(k_j)) v_j / Σ_j φ(q_i)·φ(k_j) = φ(q_i)·S / φ(q_i)·z,
    S = Σ_j φ(k_j) v_jᵀ   (features, head_dim),   z = Σ_j φ(k_j)   (features,)

computed in O(seq) time and memory. Numerics (see DESIGN.md, "Numerics"):

- ``S`` and ``z`` are accumulated in fp32 (fp64 stays fp64) with autocast switched off: at 1M tokens
  ``z`` is a sum of a million terms, far outside what bf16/fp16 accumulation can hold.
- ``S`` and ``z`` are divided by the number of real tokens, which keeps them O(1) at any length (the
  ratio is unchanged: the same factor divides numerator and denominator).
- Padded positions are removed from the *key features* (and from ``v``) with ``where``, not a
  multiply, so a padded key can neither enter the normaliser nor smuggle an inf/NaN in.
- The denominator is guarded by a clamp at :data:`DENOMINATOR_FLOOR`, not by adding an eps. With
  non-negative features ``|numerator| <= denominator * max|v|``, so a clamped row's output only shrinks
  toward 0 and is never blown up; a row whose kernel weights are all 0 (possible with ReLU features)
  returns 0. A sequence with no real token at all also returns 0.

Memory: :func:`chunked_linear_attention` (what the kernels use) runs the accumulation and the
read-out over chunks of the sequence, each under activation checkpointing (:func:`recomputed`).
Autograd then keeps only the inputs (views of the bf16 q, k, v) and the small ``S``/``z``, never the
fp32 ``(seq, features)`` features and intermediates; those exist for one chunk at a time, in forward
and again in backward, for the price of running the feature maps twice. :func:`linear_attention` is
the plain whole-sequence form (a reference; the oracles compare it with the quadratic form).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from longseq.attention.sequence_parallel import SequenceParallel
    from longseq.attention.triton_linear import FeatureSpec

T = TypeVar("T")

# A feature map for chunked attention: (x chunk in its input dtype, index of the chunk's first token,
# padding mask of the chunk or None) -> non-negative features in the compute dtype. The index serves
# position-dependent maps (cosFormer); the mask lets a key map neutralise padded keys early.
FeatureMap = Callable[[torch.Tensor, int, "torch.Tensor | None"], torch.Tensor]

# Smallest denominator a read-out divides by (on the scale of the count-normalised sums, where a
# typical denominator is O(1)). Small enough never to bias a real row in fp32, large enough that the
# backward's numerator/denominator² stays far from fp32 underflow.
DENOMINATOR_FLOOR = 1e-12


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for inputs of ``dtype``: fp32, or fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def real_token_count(
    padding_mask: torch.Tensor | None, seq_len: int, dtype: torch.dtype
) -> torch.Tensor | float:
    """Number of real tokens, shaped ``(batch, 1, 1, 1)`` for broadcasting, or ``seq_len`` without mask.

    Clamped at 1 so that an all-padding sequence divides 0 by 1 instead of 0 by 0.
    """
    if padding_mask is None:
        return float(seq_len)
    return padding_mask.sum(dim=-1).clamp_min(1).to(dtype)[:, None, None, None]


def accumulate_kv(
    phi_k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor | None,
    count: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Count-normalised ``S = φ(K)ᵀV / count`` and ``z = Σφ(K) / count`` for one chunk of keys.

    ``phi_k`` (batch, heads, seq, features), ``v`` (batch, heads, seq, head_dim), ``padding_mask``
    (batch, seq) or None. Returns ``S`` (batch, heads, features, head_dim) and ``z`` (batch, heads,
    features) in the compute dtype; summing the results of consecutive chunks gives the whole-sequence
    values when ``count`` is the whole sequence's count.
    """
    dtype = compute_dtype(phi_k.dtype)
    with torch.autocast(device_type=phi_k.device.type, enabled=False):
        phi_k = phi_k.to(dtype)
        v = v.to(dtype)
        if padding_mask is not None:
            keep = padding_mask[:, None, :, None]  # (batch, 1, seq, 1)
            phi_k = torch.where(keep, phi_k, torch.zeros((), dtype=dtype, device=phi_k.device))
            v = torch.where(keep, v, torch.zeros((), dtype=dtype, device=v.device))
        phi_k = phi_k / count  # dividing the (seq, features) side keeps S and z O(1) in one place
        s = phi_k.transpose(-2, -1) @ v  # (batch, heads, features, head_dim)
        z = phi_k.sum(dim=-2)  # (batch, heads, features)
    return s, z


def readout(phi_q: torch.Tensor, s: torch.Tensor, z: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``φ(Q)·S / clamp(φ(Q)·z)``: ``phi_q`` (batch, heads, seq, features) -> (batch, heads, seq, head_dim)."""
    dtype = compute_dtype(torch.promote_types(phi_q.dtype, s.dtype))
    with torch.autocast(device_type=phi_q.device.type, enabled=False):
        phi_q = phi_q.to(dtype)
        num = phi_q @ s.to(dtype)  # (batch, heads, seq, head_dim)
        den = (phi_q @ z.to(dtype).unsqueeze(-1)).clamp_min(DENOMINATOR_FLOOR)  # (batch, heads, seq, 1)
        out = num / den
    return out.to(out_dtype)


def linear_attention(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor | None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Normalised non-causal linear attention with non-negative features (see module docstring).

    ``phi_q``, ``phi_k`` (batch, heads, seq, features); ``v`` (batch, heads, seq, head_dim);
    ``padding_mask`` (batch, seq) bool, True = real token, or None. The result has ``v``'s shape and
    ``out_dtype`` (default: ``v.dtype``, i.e. the kernel's input dtype).
    """
    count = real_token_count(padding_mask, phi_k.shape[-2], compute_dtype(phi_k.dtype))
    s, z = accumulate_kv(phi_k, v, padding_mask, count)
    return readout(phi_q, s, z, v.dtype if out_dtype is None else out_dtype)


def recomputed(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, recomputed in backward instead of keeping its intermediates (when there is a
    backward: under ``no_grad`` or with no input requiring grad it simply runs)."""
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    )
    if not needs_grad:
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


def _chunk_sums(
    features: FeatureMap,
    start: int,
    k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor | None,
    count: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(device_type=k.device.type, enabled=False):
        return accumulate_kv(features(k, start, padding_mask), v, padding_mask, count)


def _chunk_readout(
    features: FeatureMap, start: int, q: torch.Tensor, s: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    with torch.autocast(device_type=q.device.type, enabled=False):
        return readout(features(q, start, None), s, z, q.dtype)


def chunked_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor | None,
    query_features: FeatureMap | None,
    key_features: FeatureMap | None,
    chunk_size: int,
    recompute: bool = True,
    sequence_parallel: SequenceParallel | None = None,
    fused: FeatureSpec | None = None,
) -> torch.Tensor:
    """Normalised linear attention over chunks of ``chunk_size`` tokens; same result as
    :func:`linear_attention` on the whole sequence (up to summation order).

    ``q, k, v`` (batch, heads, seq, head_dim) in any dtype; returns q's shape and dtype. With
    ``recompute`` every chunk's features are rebuilt in backward instead of being stored. With
    ``sequence_parallel`` the inputs are this rank's shard of a longer sequence: the count is global,
    feature maps get global positions, and the state is all-reduced between the two stages. With
    ``fused`` (a :class:`~longseq.attention.triton_linear.FeatureSpec`) both stages run as the fused
    Triton kernels of :mod:`longseq.attention.triton_linear` instead, and the feature-map callables
    are not used (they may be None).
    """
    seq = q.shape[-2]
    offset = 0  # global index of the first token here (sequence parallelism)
    if sequence_parallel is not None:
        count = sequence_parallel.global_count(padding_mask, q, compute_dtype(q.dtype))
        offset = sequence_parallel.offset(seq)
    else:
        count = real_token_count(padding_mask, seq, compute_dtype(q.dtype))

    if fused is not None:  # same two stages, features built inside the Triton kernels
        from longseq.attention.triton_linear import fused_readout, fused_state

        s, z = fused_state(k, v, padding_mask, count, fused, offset=offset)
        if sequence_parallel is not None:
            s, z = sequence_parallel.all_reduce_state(s, z)
        return fused_readout(q, s, z, fused, offset=offset)

    def run(fn: Callable[..., T], *args: object) -> T:
        return recomputed(fn, *args) if recompute else fn(*args)

    s = z = None
    for start in range(0, seq, chunk_size):
        stop = start + chunk_size
        mask = None if padding_mask is None else padding_mask[:, start:stop]
        s_c, z_c = run(
            _chunk_sums, key_features, offset + start, k[..., start:stop, :], v[..., start:stop, :], mask, count
        )
        s, z = (s_c, z_c) if s is None else (s + s_c, z + z_c)
    if sequence_parallel is not None:  # the shards' states -> the whole sequence's (differentiable)
        s, z = sequence_parallel.all_reduce_state(s, z)
    outs = [
        run(_chunk_readout, query_features, offset + start, q[..., start : start + chunk_size, :], s, z)
        for start in range(0, seq, chunk_size)
    ]
    return torch.cat(outs, dim=-2)  # (batch, heads, seq, head_dim)
