"""Sensor-series encoder: patch embedding followed by the shared :class:`Encoder`."""

from __future__ import annotations

import torch
from torch import nn

from longseq.models.encoder import Encoder, KernelFactory
from longseq.models.patch import PatchEmbedding


class SeriesEncoder(nn.Module):
    """Maps ``values`` ``(batch, samples, in_channels)`` to hidden states ``(batch, tokens, d_model)``.

    ``tokens = samples // patch_len``; the attention kernels are built for ``max_samples // patch_len``
    tokens. ``token_mask`` (True = hide) replaces those tokens' embeddings by a learned mask vector,
    for masked-patch pretraining.
    """

    def __init__(
        self,
        in_channels: int,
        max_samples: int,
        patch_len: int,
        attention: KernelFactory,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        rotary: bool = True,
        checkpoint_layers: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if max_samples % patch_len:
            raise ValueError(f"max_samples={max_samples} is not a multiple of patch_len={patch_len}")
        self.in_channels = in_channels
        self.patch_len = patch_len
        self.max_samples = max_samples
        self.d_model = d_model
        self.embed = PatchEmbedding(in_channels, d_model, patch_len)
        self.mask_embedding = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.mask_embedding, std=0.02)
        self.encoder = Encoder(
            d_model, n_layers, n_heads, attention, max_samples // patch_len, mlp_ratio, dropout, rotary, checkpoint_layers,
            compile=compile,
        )

    def forward(
        self,
        values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if values.dim() != 3:
            raise ValueError(f"SeriesEncoder expects values of shape (batch, samples, channels), got {tuple(values.shape)}")
        if values.shape[1] > self.max_samples:
            raise ValueError(f"{values.shape[1]} samples exceed the model's max_samples={self.max_samples}")
        x = self.embed(values)  # (batch, tokens, d_model)
        if token_mask is not None:
            x = torch.where(token_mask.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)
        return self.encoder(x, padding_mask)
