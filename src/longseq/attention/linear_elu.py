"""Linear Transformer attention (Katharopoulos et al., 2020): feature map φ(x) = elu(x) + 1.

The kernel is ``φ(q)·φ(k)`` with the normalised non-causal read-out of
:mod:`longseq.attention.linear_core`. There is no 1/√d temperature: the paper's kernel has none, and
the ratio form makes a scale on q or k change the kernel's shape, not its normalisation.
"""

from __future__ import annotations

import torch

from longseq.attention.base import AttentionKernel
from longseq.attention.linear_core import compute_dtype, linear_attention, recomputed


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` computed as ``where(x > 0, x + 1, exp(x))``.

    ``F.elu(x) + 1`` adds 1 to ``exp(x) - 1``, which in bf16 rounds small ``exp(x)`` to exactly 0 (and
    then a key stops counting at all). ``exp(min(x, 0))`` keeps the unselected branch from overflowing
    for large positive x, so neither branch can produce an inf that ``where``'s backward would turn
    into a NaN.
    """
    return torch.where(x > 0, x + 1, torch.exp(torch.clamp(x, max=0)))


def _elu_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None
) -> torch.Tensor:
    # Features from upcast inputs: the core would upcast them anyway, and fp32 features keep the
    # kernel's small values instead of rounding them to bf16's 3 significant digits.
    dtype = compute_dtype(q.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        phi_q = elu_plus_one(q.to(dtype))  # (batch, heads, seq, head_dim)
        phi_k = elu_plus_one(k.to(dtype))
    return linear_attention(phi_q, phi_k, v, padding_mask, out_dtype=q.dtype)


class LinearEluAttention(AttentionKernel):
    """Normalised linear attention with φ(x) = elu(x) + 1.

    ``recompute``: rebuild the fp32 features in backward instead of storing them (autograd then keeps
    only q, k, v; about one extra forward of compute).
    """

    exact = False
    quadratic = False

    def __init__(self, head_dim: int, max_seq_len: int, layer_idx: int = 0, recompute: bool = True) -> None:
        super().__init__(head_dim, max_seq_len, layer_idx)
        self.recompute = recompute

    def extra_repr(self) -> str:
        return f"recompute={self.recompute}"

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.recompute:
            return recomputed(_elu_linear_attention, q, k, v, padding_mask)
        return _elu_linear_attention(q, k, v, padding_mask)
