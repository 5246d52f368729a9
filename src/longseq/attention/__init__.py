"""Attention kernels behind one contract.

Every kernel is an ``nn.Module`` built as ``factory(head_dim=..., max_seq_len=..., layer_idx=...)``
(the factory is a Hydra ``_partial_`` config from ``conf/model/attention/``) whose
``forward(q, k, v, padding_mask=None)`` maps ``(batch, heads, seq, head_dim)`` tensors to the same
shape. ``padding_mask`` is ``None`` or a bool ``(batch, seq)`` tensor, True for real tokens.
"""

from longseq.attention.base import AttentionKernel, check_qkv

__all__ = ["AttentionKernel", "check_qkv"]
