"""Performer attention (Choromanski et al., 2021): FAVOR+ random features for the softmax kernel.

With ``x' = d^{-1/4} x`` and random rows ``w_i ~ N(0, I_d)``, the positive random features

    φ(x) = exp(W x' − ‖x'‖²/2) / √m                      (kernel ``softmax_pos``, m features)
    φ(x) = [exp(W x' − ‖x'‖²/2), exp(−W x' − ‖x'‖²/2)] / √m   (``softmax_hyp``, m/2 rows, m features)

give an unbiased estimate ``E[φ(q)·φ(k)] = exp(q·k/√d)``; the normalised linear read-out of
:mod:`longseq.attention.linear_core` then approximates softmax attention. ``relu`` is the paper's
generalised kernel ``φ(x) = relu(W x')/√m``. ``num_features`` is always the feature dimension m, i.e.
the cost: the hyperbolic variant spends it on m/2 random rows, so the variants compare at equal cost.

Numerics (DESIGN.md):

- projection and exp in fp32 (fp64 stays fp64) with autocast off;
- stabilisers subtracted before exp, both detached (they cancel in the ratio): per query row its max
  over features; for keys ONE max per (batch, head) over sequence and features, taken over real
  tokens only. A per-row key stabiliser would not cancel. Under sequence parallelism the key max must
  be all-reduced (MAX) across ranks: set :attr:`PerformerAttention.key_stabiliser_reduce`;
- ``eps`` is added after exp; it pulls attention toward uniform at long lengths, so it is tiny;
- random rows are orthogonal within blocks of ``head_dim`` (QR of a Gaussian block with the sign
  correction ``Q·diag(sign(diag R))``, which makes Q Haar-distributed), each rescaled by the norm of an
  independent Gaussian vector (chi-distributed), so every row is still marginally N(0, I);
- the rows are drawn from a CPU ``torch.Generator`` seeded from (seed, layer index, redraw count), so
  every DDP rank holds the same features and a resumed run redraws the same ones. They live in
  buffers (``projection``, ``redraw_count``, ``feature_seed``): a checkpoint restores them exactly.
  :meth:`PerformerAttention.redraw_features` is called by a training callback, never by ``forward``;
- the ``(seq, m)`` features are never stored for backward: the sequence is processed in chunks of
  ``chunk_size`` under activation checkpointing, so what autograd keeps is O(seq·head_dim) per head
  and the transient features are O(chunk_size·m).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable

import torch

from longseq.attention.base import AttentionKernel
from longseq.attention.linear_core import chunked_linear_attention, compute_dtype
from longseq.attention.triton_linear import FeatureSpec, check_impl, resolve_impl, unsupported_reason
from longseq.errors import UserError

KERNELS = ("softmax_pos", "softmax_hyp", "relu")


def feature_seed(seed: int, layer_idx: int, redraw_count: int) -> int:
    """A 63-bit generator seed from (run seed, layer index, redraw count), stable across processes.

    A cryptographic hash (not Python's salted ``hash``) so that distinct triples do not collide in
    any pattern and every rank/process computes the same value.
    """
    digest = hashlib.sha256(f"performer:{seed}:{layer_idx}:{redraw_count}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def orthogonal_block(gaussian: torch.Tensor) -> torch.Tensor:
    """Haar-distributed orthogonal matrices from square Gaussian ones: ``Q·diag(sign(diag R))``.

    ``gaussian`` (..., dim, dim), batched. Without the sign correction Q inherits the QR routine's
    sign convention and is not uniformly distributed (LAPACK's first column, for one, always points
    against the input's first column).
    """
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))  # (..., dim)
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)  # measure-zero, but never scale by 0
    return q * signs[..., None, :]  # scales column j by sign(R_jj)


def draw_projection(
    num_rows: int, dim: int, generator: torch.Generator, orthogonal: bool = True
) -> torch.Tensor:
    """Random rows ``(num_rows, dim)`` in float64 on CPU, each marginally ``N(0, I_dim)``.

    Orthogonal: rows are orthogonal within consecutive blocks of ``dim`` rows (independent blocks),
    with norms drawn as the norms of independent Gaussian vectors. Otherwise i.i.d. Gaussian.
    """
    opts = {"generator": generator, "dtype": torch.float64}
    if not orthogonal:
        return torch.randn(num_rows, dim, **opts)
    blocks = math.ceil(num_rows / dim)
    # Rows of Qᵀ are Q's columns: block b's rows are mutually orthogonal unit vectors.
    directions = orthogonal_block(torch.randn(blocks, dim, dim, **opts)).transpose(-2, -1)
    directions = directions.reshape(blocks * dim, dim)[:num_rows]
    norms = torch.randn(num_rows, dim, **opts).norm(dim=1)  # chi_dim distributed
    return directions * norms[:, None]


def projection_logits(x: torch.Tensor, projection: torch.Tensor, kernel: str) -> torch.Tensor:
    """The exponent (or ReLU argument) of the features, before stabilising.

    ``x`` (..., seq, head_dim), ``projection`` (rows, head_dim) -> (..., seq, features).
    """
    x = x * x.shape[-1] ** -0.25
    proj = x @ projection.T  # (..., seq, rows)
    if kernel == "relu":
        return proj
    half_sq_norm = 0.5 * (x * x).sum(dim=-1, keepdim=True)  # (..., seq, 1)
    if kernel == "softmax_pos":
        return proj - half_sq_norm
    return torch.cat([proj - half_sq_norm, -proj - half_sq_norm], dim=-1)


def features_from_logits(
    logits: torch.Tensor, kernel: str, stabiliser: torch.Tensor | float, eps: float
) -> torch.Tensor:
    """``(exp(logits − stabiliser) + eps)/√m`` (``(relu(logits) + eps)/√m`` for the ReLU kernel).

    With ``stabiliser = 0`` and ``eps = 0`` these are the raw FAVOR+ features whose dot product
    estimates ``exp(q·k/√d)`` without bias.
    """
    m = logits.shape[-1]
    if kernel == "relu":
        return (torch.relu(logits) + eps) / math.sqrt(m)
    return (torch.exp(logits - stabiliser) + eps) / math.sqrt(m)


def _masked_keys(k: torch.Tensor, padding_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``k`` upcast, padded rows zeroed: padded keys may hold anything, and no inf/NaN from them may
    reach a feature, the stabiliser or a gradient."""
    k = k.to(dtype)
    if padding_mask is None:
        return k
    return torch.where(padding_mask[:, None, :, None], k, torch.zeros((), dtype=dtype, device=k.device))


def _key_features(
    k: torch.Tensor,
    start: int,
    padding_mask: torch.Tensor | None,
    *,
    projection: torch.Tensor,
    key_max: torch.Tensor | float,
    kernel: str,
    eps: float,
) -> torch.Tensor:
    """Key features of one chunk, stabilised by the (batch, head) key max: (..., chunk, features)."""
    logits = projection_logits(_masked_keys(k, padding_mask, projection.dtype), projection, kernel)
    if kernel == "relu":
        return features_from_logits(logits, kernel, 0.0, eps)
    # Real keys are <= the key max already; padded ones (zeroed, not in the max) may not be, and exp
    # must not overflow there: an inf turns into a NaN gradient even behind a where. clamp passes the
    # gradient at equality, so the max key keeps its whole gradient.
    return features_from_logits((logits - key_max).clamp(max=0), kernel, 0.0, eps)


def _query_features(
    q: torch.Tensor,
    start: int,
    padding_mask: torch.Tensor | None,
    *,
    projection: torch.Tensor,
    kernel: str,
    eps: float,
) -> torch.Tensor:
    """Query features of one chunk, each row stabilised by its own max: (..., chunk, features)."""
    logits = projection_logits(q.to(projection.dtype), projection, kernel)
    stabiliser = 0.0 if kernel == "relu" else logits.amax(dim=-1, keepdim=True).detach()
    return features_from_logits(logits, kernel, stabiliser, eps)


class PerformerAttention(AttentionKernel):
    """FAVOR+ attention.

    Options: ``num_features`` (m, the feature dimension), ``kernel`` (``softmax_pos``, ``softmax_hyp``,
    ``relu``), ``orthogonal`` (orthogonal random rows), ``seed`` (run seed for the feature draws),
    ``eps`` (added after exp), ``chunk_size`` (tokens per recomputed chunk of the PyTorch path),
    ``impl`` (``auto``: the fused Triton kernels of :mod:`longseq.attention.triton_linear` on CUDA for
    softmax_pos/softmax_hyp, else PyTorch; ``triton``; ``torch``).
    """

    exact = False
    quadratic = False
    supports_sequence_parallel = True

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int,
        layer_idx: int = 0,
        num_features: int = 256,
        kernel: str = "softmax_pos",
        orthogonal: bool = True,
        seed: int = 0,
        eps: float = 1e-6,
        chunk_size: int = 16384,
        impl: str = "auto",
    ) -> None:
        super().__init__(head_dim, max_seq_len, layer_idx)
        if kernel not in KERNELS:
            raise UserError(
                f"unknown Performer kernel {kernel!r}: set model.attention.kernel to one of {', '.join(KERNELS)}"
            )
        if num_features <= 0 or (kernel == "softmax_hyp" and num_features % 2):
            raise UserError(
                f"Performer num_features must be positive (and even for softmax_hyp, which spends it on "
                f"num_features/2 random rows); got {num_features} with kernel {kernel}: set "
                f"model.attention.num_features accordingly"
            )
        if eps < 0:
            raise UserError(
                f"Performer eps must be >= 0, got {eps}; set model.attention.eps to a tiny value like 1e-6"
            )
        if chunk_size <= 0:
            raise UserError(
                f"Performer chunk_size must be positive, got {chunk_size}; set model.attention.chunk_size"
            )
        self.num_features = num_features
        self.kernel = kernel
        self.orthogonal = orthogonal
        self.eps = eps
        self.chunk_size = chunk_size
        self.impl = check_impl(impl, "performer")
        self.last_backend = "none"  # "triton" or "torch" once forward ran (logged as the attention backend)
        self.num_rows = num_features // 2 if kernel == "softmax_hyp" else num_features
        # Optional MAX all-reduce of the key stabiliser, (batch, heads) -> (batch, heads), for
        # sequence parallelism; every rank must subtract the same key max for the ratio to cancel.
        self.key_stabiliser_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.register_buffer("projection", torch.empty(self.num_rows, head_dim, dtype=torch.float32))
        self.register_buffer("redraw_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("feature_seed", torch.tensor(int(seed), dtype=torch.long))
        self._draw()

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, kernel={self.kernel}, orthogonal={self.orthogonal}, "
            f"eps={self.eps}, layer_idx={self.layer_idx}, impl={self.impl}"
        )

    @torch.no_grad()
    def _draw(self) -> None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(feature_seed(int(self.feature_seed), self.layer_idx, int(self.redraw_count)))
        rows = draw_projection(self.num_rows, self.head_dim, generator, self.orthogonal)
        self.projection.copy_(rows.to(device=self.projection.device, dtype=self.projection.dtype))

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw the next set of random features (redraw count + 1). Never called by ``forward``."""
        self.redraw_count += 1
        self._draw()

    def _key_max(
        self, k: torch.Tensor, padding_mask: torch.Tensor | None, projection: torch.Tensor
    ) -> torch.Tensor | float:
        """The key stabiliser, ``(batch, heads, 1, 1)``: max over real tokens and features (no grad)."""
        if self.kernel == "relu":
            return 0.0
        size = self.chunk_size
        with torch.no_grad(), torch.autocast(device_type=k.device.type, enabled=False):
            maxima = []
            for start in range(0, k.shape[-2], size):
                # The same computation as in _key_features, so no real key's logit exceeds the max.
                mask = None if padding_mask is None else padding_mask[:, start : start + size]
                keys = _masked_keys(k[..., start : start + size, :], mask, projection.dtype)
                logits = projection_logits(keys, projection, self.kernel)  # (batch, heads, chunk, features)
                row_max = logits.amax(dim=-1)  # (batch, heads, chunk)
                if mask is not None:
                    row_max = row_max.masked_fill(~mask[:, None, :], float("-inf"))
                maxima.append(row_max.amax(dim=-1))
            key_max = torch.stack(maxima).amax(dim=0)  # (batch, heads)
            if self.key_stabiliser_reduce is not None:
                key_max = self.key_stabiliser_reduce(key_max)
            # An all-padding sequence has no max; any finite value does (its keys are all dropped).
            key_max = torch.where(torch.isfinite(key_max), key_max, torch.zeros_like(key_max))
        return key_max[..., None, None]

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        unsupported = (
            "kernel relu" if self.kernel == "relu" else unsupported_reason("favor", q.shape[-1], self.num_features)
        )
        backend = resolve_impl(self.impl, q, unsupported, "performer")
        if backend != self.last_backend:  # nn.Module.__setattr__ costs µs of host time on every call
            self.last_backend = backend
        if backend == "triton":
            # Stabilisers, eps and recomputation are inside the kernels (key max: online per chunk).
            spec = FeatureSpec(
                "favor", projection=self.projection, hyperbolic=self.kernel == "softmax_hyp", eps=self.eps,
                key_max_reduce=self.key_stabiliser_reduce,
            )
            return chunked_linear_attention(
                q, k, v, padding_mask, None, None, self.chunk_size,
                sequence_parallel=self.sequence_parallel, fused=spec,
            )
        projection = self.projection.to(compute_dtype(q.dtype))
        key_max = self._key_max(k, padding_mask, projection)
        query_features = functools.partial(
            _query_features, projection=projection, kernel=self.kernel, eps=self.eps
        )
        key_features = functools.partial(
            _key_features, projection=projection, key_max=key_max, kernel=self.kernel, eps=self.eps
        )
        return chunked_linear_attention(
            q, k, v, padding_mask, query_features, key_features, self.chunk_size,
            sequence_parallel=self.sequence_parallel,
        )
