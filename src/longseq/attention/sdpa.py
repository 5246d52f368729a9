"""Exact softmax attention through PyTorch's fused ``scaled_dot_product_attention``.

This is the baseline every linear mechanism is compared with. The backend is chosen by PyTorch
(``auto``) or pinned (``flash``, ``cudnn``, ``efficient``, ``math``) with ``sdpa_kernel``; pinning
matters because PyTorch otherwise falls back silently to another backend (the FLASH kernel, for
one, rejects any mask). The backend that actually ran is kept in ``last_backend`` so that a
comparison can record it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from longseq.attention.base import AttentionKernel
from longseq.errors import UserError

BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
_NAMES = {v: k for k, v in BACKENDS.items()}


def backend_available(name: str) -> bool:
    """Whether this machine can run the named SDPA backend at all."""
    if name in ("auto", "math"):
        return True
    if not torch.cuda.is_available():
        return False
    if name == "flash":
        return torch.backends.cuda.is_flash_attention_available()
    if name == "cudnn":
        return torch.backends.cudnn.is_available()
    return True  # efficient (memory-efficient attention) ships with every CUDA build


def chosen_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> str:
    """Name of the backend PyTorch's dispatcher picks for these inputs (``unknown`` if it can't say)."""
    try:  # private but stable helper used by PyTorch's own tests
        index = torch._fused_sdp_choice(q, k, v, mask, 0.0, False)
        name = _NAMES.get(SDPBackend(index), "unknown")
        return name if q.is_cuda else f"{name}-cpu"  # CPU "flash" is PyTorch's fused CPU kernel
    except Exception:  # noqa: BLE001 - recording the backend must never break training
        return "unknown"


class SDPAttention(AttentionKernel):
    """Exact attention; ``backend`` is ``auto`` or one of :data:`BACKENDS` (pinned)."""

    exact = True
    quadratic = True

    def __init__(
        self, head_dim: int, max_seq_len: int, layer_idx: int = 0, backend: str = "auto", dropout: float = 0.0
    ) -> None:
        super().__init__(head_dim, max_seq_len, layer_idx)
        if backend != "auto" and backend not in BACKENDS:
            raise UserError(f"unknown SDPA backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}")
        if not backend_available(backend):
            raise UserError(
                f"SDPA backend {backend!r} is not available on this machine "
                f"(CUDA available: {torch.cuda.is_available()}); use model/attention=sdpa "
                f"(backend auto) or model.attention.backend=math"
            )
        self.backend = backend
        self.dropout = dropout
        self.last_backend = "none"

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        mask = None
        if padding_mask is not None:
            if self.backend == "flash":
                raise UserError(
                    "the FLASH SDPA backend cannot take a padding mask; use model.attention.backend=auto "
                    "(or cudnn/efficient) for padded batches"
                )
            if not bool(padding_mask.any(dim=1).all()):
                raise ValueError("a sequence in the batch has no real token: every key is padding")
            mask = padding_mask[:, None, None, :]  # (batch, 1, 1, seq): True = attend to this key
        dropout = self.dropout if self.training else 0.0
        if self.backend == "auto":
            self.last_backend = chosen_backend(q, k, v, mask)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        self.last_backend = self.backend
        with sdpa_kernel([BACKENDS[self.backend]]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
