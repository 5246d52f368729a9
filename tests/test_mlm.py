"""Masked-LM task: masking rules, bits per base, unigram baseline; encoder padding invariance."""

from __future__ import annotations

import math

import torch
from hydra.utils import instantiate

from longseq.attention.sdpa import SDPAttention
from longseq.data.tokenizer import MASK, NUM_BASES, PAD, N
from longseq.models.dna import DNAEncoder
from longseq.tasks.mlm import IGNORE, MaskedLMTask, mask_tokens


def test_masking_touches_only_real_bases_with_bert_proportions():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 5, (64, 1024), generator=g)  # includes N
    pad = torch.ones_like(tokens, dtype=torch.bool)
    pad[:, 900:] = False
    tokens[~pad] = PAD
    inputs, labels = mask_tokens(tokens, pad, 0.15, torch.Generator().manual_seed(1))
    chosen = labels != IGNORE
    assert not chosen[~pad].any()
    assert not chosen[tokens == N].any()
    assert torch.equal(labels[chosen], tokens[chosen])
    scorable = pad & (tokens < NUM_BASES)
    assert abs(chosen.sum() / scorable.sum() - 0.15) < 0.01
    masked = (inputs == MASK) & chosen
    assert abs(masked.sum() / chosen.sum() - 0.8) < 0.02
    assert torch.equal(inputs[~chosen], tokens[~chosen])  # nothing else changes


def test_masking_is_reproducible_with_a_seeded_generator():
    tokens = torch.randint(0, 4, (4, 256))
    pad = torch.ones_like(tokens, dtype=torch.bool)
    a = mask_tokens(tokens, pad, 0.15, torch.Generator().manual_seed(5))
    b = mask_tokens(tokens, pad, 0.15, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def small_model(max_seq_len: int = 128) -> DNAEncoder:
    attention = instantiate({"_target_": "longseq.attention.sdpa.SDPAttention", "_partial_": True})
    return DNAEncoder(7, max_seq_len, attention, d_model=32, n_layers=2, n_heads=2)


def test_bits_per_base_is_loss_over_ln2_and_unigram_is_measured_on_the_same_positions():
    torch.manual_seed(0)
    task = MaskedLMTask(small_model(), total_steps=10)
    task.unigram_log2p.copy_(torch.full((4,), math.log2(0.25)))  # uniform: exactly 2 bits per base
    batch = {"tokens": torch.randint(0, 4, (4, 128)), "padding_mask": torch.ones(4, 128, dtype=torch.bool)}
    task.log = lambda *a, **k: None  # no trainer attached
    loss = task._step(batch, "val", 0)
    assert torch.isclose(task.metrics["val_loss"].compute(), loss.detach())
    assert torch.isclose(task.metrics["val_unigram_bpb"].compute(), torch.tensor(2.0))


def test_encoder_ignores_padded_tokens():
    torch.manual_seed(0)
    model = small_model().double().eval()
    tokens = torch.randint(0, 5, (2, 128))
    pad = torch.ones(2, 128, dtype=torch.bool)
    pad[0, 100:] = False
    other = tokens.clone()
    other[0, 100:] = torch.randint(0, 7, (28,))
    a, b = model(tokens, pad), model(other, pad)
    assert torch.allclose(a[pad], b[pad], atol=1e-12)


def test_sdpa_kernel_is_exact_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 8, dtype=torch.float64) for _ in range(3))
    ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
    assert torch.allclose(SDPAttention(8, 50)(q, k, v), ref, atol=1e-12)
