"""Pre-norm encoder-only transformer with a swappable attention kernel.

The projections, the head split and the output projection live here, once; the kernel (built from
``conf/model/attention/<name>.yaml``) only maps ``q, k, v`` ``(batch, heads, seq, head_dim)`` to the
attention output. Works on any input embedding (DNA tokens, sensor patches).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from longseq.attention.base import AttentionKernel
from longseq.models.rotary import RotaryEmbedding, apply_rotary

KernelFactory = Callable[..., AttentionKernel]


class MultiHeadAttention(nn.Module):
    """Fused QKV projection, optional rotary positions, the kernel, output projection."""

    def __init__(self, d_model: int, n_heads: int, attention: KernelFactory, max_seq_len: int, layer_idx: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        self.kernel = attention(head_dim=d_model // n_heads, max_seq_len=max_seq_len, layer_idx=layer_idx)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.n_heads)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        out = self._attend(q, k, v, padding_mask)  # (batch, heads, seq, head_dim)
        return self.out(rearrange(out, "b h n d -> b n (h d)"))

    @torch.compiler.disable
    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        # Kept out of torch.compile graphs (a graph break when the layer is compiled): the kernels are
        # already fused (Triton, cuDNN, compiled flex) and switch backends on data-dependent checks.
        return self.kernel(q, k, v, padding_mask)


class EncoderLayer(nn.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))``: pre-norm trains stably without warm-up tricks."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        attention: KernelFactory,
        max_seq_len: int,
        layer_idx: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, attention, max_seq_len, layer_idx)
        self.norm2 = nn.LayerNorm(d_model)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), padding_mask, rope))
        return x + self.drop(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer` over ``(batch, seq, d_model)`` embeddings, with a final norm."""

    # Sequence parallelism (longseq.attention.sequence_parallel): x is one shard of a longer
    # sequence, so rotary positions start at the shard's global offset.
    supports_sequence_parallel = True
    sequence_parallel = None

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        attention: KernelFactory,
        max_seq_len: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        rotary: bool = True,
        checkpoint_layers: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if n_layers <= 0 or n_heads <= 0 or d_model <= 0:
            raise ValueError(f"n_layers, n_heads and d_model must be positive: {n_layers}, {n_heads}, {d_model}")
        self.d_model = d_model
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, attention, max_seq_len, i, mlp_ratio, dropout) for i in range(n_layers)
        )
        self.rotary = RotaryEmbedding(d_model // n_heads) if rotary else None
        self.norm = nn.LayerNorm(d_model)
        self.checkpoint_layers = checkpoint_layers
        self.compile_layers = compile
        if compile:
            # In place (nn.Module.compile): parameter names and checkpoints stay those of the eager
            # model. Each layer compiles once (norms, projections, rotary, MLP fused by inductor); the
            # attention kernel runs between the compiled graphs.
            for layer in self.layers:
                layer.compile(dynamic=False)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        offset = self.sequence_parallel.offset(x.shape[1]) if self.sequence_parallel is not None else 0
        rope = self.rotary(x.shape[1], x.device, offset) if self.rotary is not None else None
        for layer in self.layers:
            if self.checkpoint_layers and self.training:
                # Recompute activations in backward: memory per layer O(seq * d_model) instead of O(depth * ...).
                x = checkpoint(layer, x, padding_mask, rope, use_reentrant=False)
            else:
                x = layer(x, padding_mask, rope)
        return self.norm(x)

    def kernels(self) -> list[AttentionKernel]:
        """The attention kernels, one per layer (for logging which backend ran, redraws, ...)."""
        return [layer.attn.kernel for layer in self.layers]
