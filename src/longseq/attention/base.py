"""The kernel contract shared by every attention mechanism, and its input checks."""

from __future__ import annotations

import torch
from torch import nn


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming the problem when the inputs break the kernel contract."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects q, k, v of shape (batch, heads, seq, head_dim); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape != k.shape or k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"q, k, v shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if padding_mask is not None:
        if padding_mask.dtype != torch.bool:
            raise ValueError(f"padding_mask must be a bool tensor (True = real token); got {padding_mask.dtype}")
        if padding_mask.shape != (q.shape[0], q.shape[2]):
            raise ValueError(
                f"padding_mask must have shape (batch, seq) = {(q.shape[0], q.shape[2])}; "
                f"got {tuple(padding_mask.shape)}"
            )


class AttentionKernel(nn.Module):
    """Base class: subclasses implement :meth:`attend`; :meth:`forward` checks the contract first.

    Class attributes tell tests and benchmarks what a kernel is:
    ``exact`` (computes softmax attention exactly), ``quadratic`` (cost grows with ``seq**2``) and
    ``supports_sequence_parallel``.
    """

    exact: bool = False
    quadratic: bool = False
    #: Whether the kernel can split one sequence over ranks (:mod:`longseq.attention.sequence_parallel`),
    #: and the group it does so in (set by ``sequence_parallel.enable``; None = the whole sequence is here).
    supports_sequence_parallel: bool = False
    sequence_parallel = None

    def __init__(self, head_dim: int, max_seq_len: int, layer_idx: int = 0) -> None:
        super().__init__()
        if head_dim <= 0:
            raise ValueError(f"head_dim must be positive, got {head_dim}")
        if max_seq_len <= 0:
            raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.layer_idx = layer_idx

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_qkv(q, k, v, padding_mask)
        if padding_mask is not None and bool(padding_mask.all()):
            padding_mask = None  # nothing is padded: take the unmasked (faster) path
        return self.attend(q, k, v, padding_mask)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
