"""DNA encoder: nucleotide token embedding followed by the shared :class:`Encoder`."""

from __future__ import annotations

import torch
from torch import nn

from longseq.attention.sequence_parallel import check_supported
from longseq.errors import UserError
from longseq.models.encoder import Encoder, KernelFactory


class DNAEncoder(nn.Module):
    """Maps tokens ``(batch, seq)`` to hidden states ``(batch, seq, d_model)``."""

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        attention: KernelFactory,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        rotary: bool = True,
        checkpoint_layers: bool = False,
        sequence_parallel: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        self.encoder = Encoder(
            d_model, n_layers, n_heads, attention, max_seq_len, mlp_ratio, dropout, rotary, checkpoint_layers,
            compile=compile,
        )
        # Ranks that split one sequence (longseq.attention.sequence_parallel); the training run joins
        # them into groups once the processes exist. Checked here, so a bad config fails at start-up.
        if not isinstance(sequence_parallel, int) or sequence_parallel < 1:
            raise UserError(f"model.sequence_parallel must be a positive integer, got {sequence_parallel!r}")
        if max_seq_len % sequence_parallel:
            raise UserError(
                f"model.sequence_parallel={sequence_parallel} must divide the sequence length "
                f"data.seq_len={max_seq_len} (every rank holds an equal shard)"
            )
        check_supported(self, sequence_parallel)
        self.sequence_parallel_size = sequence_parallel

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"DNAEncoder expects tokens of shape (batch, seq), got {tuple(tokens.shape)}")
        return self.encoder(self.embed(tokens), padding_mask)
