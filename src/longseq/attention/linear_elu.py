"""Linear Transformer attention (Katharopoulos et al., 2020): feature map φ(x) = elu(x) + 1.

The kernel is ``φ(q)·φ(k)`` with the normalised non-causal read-out of
:mod:`longseq.attention.linear_core`. There is no 1/√d temperature: the paper's kernel has none, and
the ratio form makes a scale on q or k change the kernel's shape, not its normalisation.
"""

from __future__ import annotations

import torch

from longseq.attention.base import AttentionKernel
from longseq.attention.linear_core import chunked_linear_attention, compute_dtype
from longseq.attention.triton_linear import FeatureSpec, check_impl, resolve_impl, unsupported_reason
from longseq.errors import UserError


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` computed as ``where(x > 0, x + 1, exp(x))``.

    ``F.elu(x) + 1`` adds 1 to ``exp(x) - 1``, which in bf16 rounds small ``exp(x)`` to exactly 0 (and
    then a key stops counting at all). ``exp(min(x, 0))`` keeps the unselected branch from overflowing
    for large positive x, so neither branch can produce an inf that ``where``'s backward would turn
    into a NaN.
    """
    return torch.where(x > 0, x + 1, torch.exp(torch.clamp(x, max=0)))


def _elu_features(x: torch.Tensor, start: int, padding_mask: torch.Tensor | None) -> torch.Tensor:
    # From upcast inputs: fp32 features keep the kernel's small values instead of rounding them to
    # bf16's 3 significant digits (the core would upcast them anyway).
    return elu_plus_one(x.to(compute_dtype(x.dtype)))


class LinearEluAttention(AttentionKernel):
    """Normalised linear attention with φ(x) = elu(x) + 1.

    ``chunk_size``: tokens per chunk of the accumulation and read-out; ``recompute``: rebuild each
    chunk's fp32 features in backward instead of storing them (autograd then keeps only q, k, v; about
    one extra forward of compute); ``impl``: ``auto`` (fused Triton kernels on CUDA, else PyTorch),
    ``triton`` or ``torch`` (chunk_size and recompute apply to the PyTorch path).
    """

    exact = False
    quadratic = False
    supports_sequence_parallel = True

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int,
        layer_idx: int = 0,
        chunk_size: int = 65536,
        recompute: bool = True,
        impl: str = "auto",
    ) -> None:
        super().__init__(head_dim, max_seq_len, layer_idx)
        if chunk_size <= 0:
            raise UserError(
                f"linear_elu chunk_size must be positive, got {chunk_size}; set model.attention.chunk_size"
            )
        self.chunk_size = chunk_size
        self.recompute = recompute
        self.impl = check_impl(impl, "linear_elu")
        self.last_backend = "none"  # "triton" or "torch" once forward ran (logged as the attention backend)

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}, recompute={self.recompute}, impl={self.impl}"

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        backend = resolve_impl(self.impl, q, unsupported_reason("elu", q.shape[-1]), "linear_elu")
        if backend != self.last_backend:  # nn.Module.__setattr__ costs µs of host time on every call
            self.last_backend = backend
        fused = FeatureSpec("elu") if backend == "triton" else None
        return chunked_linear_attention(
            q, k, v, padding_mask, _elu_features, _elu_features, self.chunk_size, self.recompute,
            sequence_parallel=self.sequence_parallel, fused=fused,
        )
