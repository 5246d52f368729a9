"""Float64 oracles for the attention kernels.

Linear kernels against the explicit quadratic form of the same kernel (build the seq × seq weight
matrix, normalise rows, multiply), FAVOR+ unbiasedness over many feature draws and convergence to
softmax, Linformer reducing to exact attention, sliding windows against a dense banded softmax, and
the exact SDPA kernel against a naive softmax.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longseq.attention.cosformer import CosformerAttention
from longseq.attention.hybrid import (
    FLEX_BLOCK,
    HybridAttention,
    band_block_mask,
    sliding_window_blocked,
    sliding_window_flex,
)
from longseq.attention.linear_core import DENOMINATOR_FLOOR, linear_attention
from longseq.attention.linear_elu import LinearEluAttention, elu_plus_one
from longseq.attention.linformer import LinformerAttention
from longseq.attention.performer import (
    PerformerAttention,
    draw_projection,
    features_from_logits,
    orthogonal_block,
    projection_logits,
)
from longseq.attention.sdpa import SDPAttention
from longseq.errors import UserError

F64 = torch.float64


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def qkv(batch=2, heads=3, seq=23, dim=8, seed=0, scale=1.0):
    return (
        randn(batch, heads, seq, dim, seed=seed, scale=scale),
        randn(batch, heads, seq, dim, seed=seed + 1, scale=scale),
        randn(batch, heads, seq, dim, seed=seed + 2),
    )


def some_padding(batch=2, seq=23) -> torch.Tensor:
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[0, -6:] = False
    mask[1, 2:5] = False
    return mask


def naive_softmax(q, k, v, mask=None, allowed=None):
    """Dense softmax attention; ``allowed`` (seq, seq) restricts keys per query; empty rows give 0."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    ok = torch.ones(scores.shape, dtype=torch.bool)
    if mask is not None:
        ok = ok & mask[:, None, None, :]
    if allowed is not None:
        ok = ok & allowed
    weights = torch.softmax(scores.masked_fill(~ok, -math.inf), dim=-1).nan_to_num(0.0)
    return weights @ v


def quadratic_form(kernel_matrix, v, mask=None):
    """Row-normalised kernel attention, written out: weights (batch, heads, seq, seq) ≥ 0."""
    if mask is not None:
        kernel_matrix = kernel_matrix * mask[:, None, None, :]
    count = kernel_matrix.shape[-1] if mask is None else mask.sum(-1).clamp_min(1)[:, None, None, None]
    kernel_matrix = kernel_matrix / count  # the same O(1) scaling and floor as the linear core
    return (kernel_matrix @ v) / kernel_matrix.sum(-1, keepdim=True).clamp_min(DENOMINATOR_FLOOR)


# --- linear kernels against their quadratic forms ----------------------------------------------------


@pytest.mark.parametrize("chunk_size", [5, 1000])
@pytest.mark.parametrize("padded", [False, True])
def test_linear_elu_equals_quadratic_form(padded, chunk_size):
    q, k, v = qkv()
    mask = some_padding() if padded else None
    kernel_matrix = elu_plus_one(q) @ elu_plus_one(k).transpose(-2, -1)
    expected = quadratic_form(kernel_matrix, v, mask)
    out = LinearEluAttention(8, 64, chunk_size=chunk_size)(q, k, v, mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        linear_attention(elu_plus_one(q), elu_plus_one(k), v, mask), expected, rtol=0, atol=1e-10
    )


def test_elu_plus_one_is_safe_in_bf16():
    x = torch.tensor([-30.0, -8.0, -1e-3, 0.0, 2.0], dtype=torch.bfloat16)
    phi = elu_plus_one(x)
    assert (phi > 0).all()  # F.elu(x) + 1 rounds the first two to exactly 0 in bf16
    torch.testing.assert_close(phi.double(), F.elu(x.double()) + 1, rtol=1e-2, atol=0)


@pytest.mark.parametrize("chunk_size", [5, 1000])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("horizon", [None, 100])
def test_cosformer_equals_quadratic_form(padded, horizon, chunk_size):
    q, k, v = qkv()
    seq = q.shape[-2]
    mask = some_padding() if padded else None
    big_m = seq if horizon is None else horizon  # kernel built with max_seq_len = seq
    i = torch.arange(seq, dtype=F64)
    reweight = torch.cos(math.pi / 2 * (i[:, None] - i[None, :]) / big_m)
    kernel_matrix = (torch.relu(q) @ torch.relu(k).transpose(-2, -1)) * reweight
    expected = quadratic_form(kernel_matrix, v, mask)
    out = CosformerAttention(8, seq, horizon=horizon, chunk_size=chunk_size)(q, k, v, mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_cosformer_refuses_sequences_past_its_horizon():
    q, k, v = qkv(seq=30)
    with pytest.raises(UserError, match="horizon"):
        CosformerAttention(8, 20)(q, k, v)


# --- Performer (FAVOR+) ------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["softmax_pos", "softmax_hyp"])
@pytest.mark.parametrize("orthogonal", [False, True])
def test_favor_kernel_estimate_is_unbiased(kernel, orthogonal):
    """Mean over independent draws of φ(q)·φ(k) → exp(q·k/√d), within 5 standard errors."""
    dim, draws, features = 8, 1500, 16
    q, k = randn(dim, seed=3, scale=0.6), randn(dim, seed=4, scale=0.6)
    exact = torch.exp(q @ k / math.sqrt(dim))
    rows = features // 2 if kernel == "softmax_hyp" else features
    # Consecutive groups of `rows` (whole orthogonal blocks) of one long draw are independent draws.
    assert rows % dim == 0
    all_rows = draw_projection(draws * rows, dim, torch.Generator().manual_seed(0), orthogonal)
    estimates = []
    for w in all_rows.view(draws, rows, dim):
        phi_q = features_from_logits(projection_logits(q[None], w, kernel), kernel, 0.0, 0.0)
        phi_k = features_from_logits(projection_logits(k[None], w, kernel), kernel, 0.0, 0.0)
        estimates.append((phi_q * phi_k).sum())
    estimates = torch.stack(estimates)
    std_err = estimates.std() / math.sqrt(draws)
    assert abs(estimates.mean() - exact) < 5 * std_err, (estimates.mean(), exact, std_err)
    assert std_err < 0.05 * exact  # the bound is tight enough to mean something


def test_favor_error_against_softmax_falls_with_more_features():
    """Small-norm inputs: the relative error vs exact softmax shrinks like 1/√m (×16 m ≈ ÷4 error)."""
    dim, seq, seeds = 8, 64, 8

    def mean_error(features: int) -> float:
        errors = []
        for seed in range(seeds):
            q, k, v = qkv(batch=1, heads=2, seq=seq, dim=dim, seed=100 + 3 * seed, scale=0.5)
            out = PerformerAttention(dim, seq, num_features=features, seed=seed).double()(q, k, v)
            ref = naive_softmax(q, k, v)
            errors.append(((out - ref).norm() / ref.norm()).item())
        return sum(errors) / seeds

    e16, e256, e4096 = mean_error(16), mean_error(256), mean_error(4096)
    assert e256 < e16 / 2 and e4096 < e256 / 2, (e16, e256, e4096)
    assert e4096 < 0.06


def test_orthogonal_rows_within_blocks_and_chi_norms():
    dim, rows = 8, 44  # five full blocks and a partial one
    w = draw_projection(rows, dim, torch.Generator().manual_seed(0), orthogonal=True)
    for start in range(0, rows, dim):
        block = w[start : start + dim]
        gram = block @ block.T
        off_diagonal = gram - torch.diag(torch.diagonal(gram))
        assert off_diagonal.abs().max() < 1e-12 * gram.diagonal().max()
    # Norms are not 1 but chi_d: E‖w‖² = d (checked over many rows, 5 standard errors).
    many = draw_projection(4000, dim, torch.Generator().manual_seed(1), orthogonal=True)
    sq = (many * many).sum(-1)
    assert abs(sq.mean() - dim) < 5 * sq.std() / math.sqrt(len(sq))


def test_orthogonal_block_sign_correction():
    """Q·diag(sign(diag R)): QᵀG is R with a positive diagonal, so Q's first column is G's, normalised
    (LAPACK's raw Q has it pointing the other way, which biases the distribution)."""
    g = randn(6, 6, seed=5)
    q = orthogonal_block(g)
    torch.testing.assert_close(q.T @ q, torch.eye(6, dtype=F64), rtol=0, atol=1e-12)
    r = q.T @ g
    torch.testing.assert_close(torch.tril(r, diagonal=-1), torch.zeros(6, 6, dtype=F64), rtol=0, atol=1e-12)
    assert (torch.diagonal(r) > 0).all()
    torch.testing.assert_close(q[:, 0], g[:, 0] / g[:, 0].norm(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", ["softmax_pos", "softmax_hyp", "relu"])
def test_performer_chunking_changes_nothing_and_gradients_are_exact(kernel):
    q, k, v = (x.requires_grad_() for x in qkv(seq=29, scale=0.5))
    mask = some_padding(seq=29)
    whole = PerformerAttention(8, 64, num_features=12, kernel=kernel, chunk_size=1000, eps=0.0).double()
    chunked = PerformerAttention(8, 64, num_features=12, kernel=kernel, chunk_size=4, eps=0.0).double()
    out_whole, out_chunked = whole(q, k, v, mask), chunked(q, k, v, mask)
    torch.testing.assert_close(out_chunked, out_whole, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out_chunked.square().sum(), (q, k, v))
    grads_whole = torch.autograd.grad(out_whole.square().sum(), (q, k, v))
    for a, b in zip(grads, grads_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # With eps = 0 the stabilisers cancel exactly, so detaching them leaves the true gradient.
    small = [x.detach()[:1, :1, :9].clone().requires_grad_() for x in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: chunked(a, b, c, mask[:1, :9]), small, fast_mode=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PerformerAttention(4, 512, num_features=64, chunk_size=128),
        lambda: LinearEluAttention(4, 512),
        lambda: CosformerAttention(4, 512),
    ],
    ids=["performer", "linear_elu", "cosformer"],
)
def test_features_are_recomputed_not_kept_for_backward(make):
    """Autograd keeps q, k, v themselves (views of them) and small (features, head_dim) sums only:
    no features, no fp32 copies. A kernel that stored its features would fail this."""
    q, k, v = (x.float().requires_grad_() for x in qkv(batch=1, heads=1, seq=512, dim=4))
    inputs = {x.untyped_storage().data_ptr() for x in (q, k, v)}
    kernel = make()
    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in inputs:
            kept.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = kernel(q, k, v)
    assert max(kept, default=0) <= 64 * 4  # (num_features, head_dim) is the largest allowed
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_performer_rejects_bad_options():
    with pytest.raises(UserError, match="kernel"):
        PerformerAttention(8, 64, kernel="softmax")
    with pytest.raises(UserError, match="even"):
        PerformerAttention(8, 64, kernel="softmax_hyp", num_features=7)


def test_performer_key_stabiliser_hook_sees_the_key_max():
    seen = []
    kernel = PerformerAttention(8, 64, num_features=16, eps=0.0).double()
    kernel.key_stabiliser_reduce = lambda m: seen.append(m.shape) or m + 3.0  # any common shift cancels
    q, k, v = qkv()
    out = kernel(q, k, v)
    kernel.key_stabiliser_reduce = None
    assert seen == [torch.Size([2, 3])]
    torch.testing.assert_close(out, kernel(q, k, v), rtol=1e-12, atol=0)


# --- Linformer ---------------------------------------------------------------------------------------


def test_linformer_learned_identity_projection_is_exact_attention():
    seq = 23
    q, k, v = qkv(seq=seq)
    kernel = LinformerAttention(8, seq, k=seq, projection="learned").double()
    with torch.no_grad():
        kernel.proj_k.copy_(torch.eye(seq, dtype=F64))
    torch.testing.assert_close(kernel(q, k, v), naive_softmax(q, k, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("projection", ["pool", "conv"])
def test_linformer_pooling_with_k_at_least_seq_is_exact_masked_attention(projection):
    q, k, v = qkv()
    mask = some_padding()
    kernel = LinformerAttention(8, 64, k=256, projection=projection).double()
    torch.testing.assert_close(kernel(q, k, v, mask), naive_softmax(q, k, v, mask), rtol=0, atol=1e-12)


def test_linformer_pool_equals_masked_segment_means():
    seq, slots = 24, 6  # segments of 4
    q, k, v = qkv(seq=seq)
    mask = some_padding(seq=seq)
    mask[0, 4:8] = False  # one segment entirely padding: its slot must not take part

    def pooled(x):
        x = (x * mask[:, None, :, None]).view(2, 3, slots, 4, 8).sum(3)
        return x / mask.view(2, slots, 4).sum(-1).clamp_min(1)[:, None, :, None]

    slot_mask = mask.view(2, slots, 4).any(-1)
    expected = naive_softmax(q, pooled(k), pooled(v), slot_mask)
    out = LinformerAttention(8, 64, k=slots, projection="pool").double()(q, k, v, mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # The conv projection starts flat, i.e. as the pool.
    conv = LinformerAttention(8, 64, k=slots, projection="conv", share_kv=False).double()
    torch.testing.assert_close(conv(q, k, v, mask), expected, rtol=0, atol=1e-12)


def test_linformer_learned_refuses_sequences_past_max_seq_len():
    q, k, v = qkv(seq=40)
    kernel = LinformerAttention(8, 32, k=8, projection="learned").double()
    with pytest.raises(UserError, match=r"32 positions.*40 tokens.*projection=pool"):
        kernel(q, k, v)


def test_linformer_pool_and_conv_parameters_do_not_grow_with_length():
    for projection in ("pool", "conv"):
        short = sum(p.numel() for p in LinformerAttention(8, 1024, projection=projection).parameters())
        long = sum(p.numel() for p in LinformerAttention(8, 1 << 20, projection=projection).parameters())
        assert short == long <= 32


# --- sliding windows and the hybrid ------------------------------------------------------------------


def band(seq: int, window: int) -> torch.Tensor:
    i = torch.arange(seq)
    return (i[:, None] - i[None, :]).abs() <= window


@pytest.mark.parametrize(("seq", "window"), [(23, 0), (23, 1), (23, 4), (23, 7), (23, 40), (50, 16)])
@pytest.mark.parametrize("padded", [False, True])
def test_blocked_sliding_window_equals_dense_band(seq, window, padded):
    q, k, v = qkv(seq=seq)
    mask = some_padding(seq=seq) if padded else None
    expected = naive_softmax(q, k, v, mask, band(seq, window))
    torch.testing.assert_close(sliding_window_blocked(q, k, v, mask, window), expected, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize(("seq", "window"), [(3 * FLEX_BLOCK + 17, 150), (8 * FLEX_BLOCK - 24, 37)])
def test_flex_band_block_mask_covers_the_window_and_matches_eager(seq, window):
    block_mask = band_block_mask(seq, window, None, torch.device("cpu"))
    dense = block_mask.to_dense()[0, 0]  # (query blocks, key blocks)
    need = torch.zeros_like(dense)
    rows, cols = torch.nonzero(band(seq, window), as_tuple=True)
    need[rows // FLEX_BLOCK, cols // FLEX_BLOCK] = 1
    assert ((need > 0) <= (dense > 0)).all()  # every needed block is listed
    assert dense.sum() < dense.numel()  # and it is a band, not everything
    q, k, v = qkv(batch=1, heads=2, seq=seq)
    mask = torch.ones(1, seq, dtype=torch.bool)
    mask[0, 100:140] = False
    expected = naive_softmax(q, k, v, mask, band(seq, window))
    out = sliding_window_flex(q, k, v, mask, window, compiled=False)  # eager reference path
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padded", [False, True])
def test_hybrid_is_local_heads_then_global_heads(padded):
    q, k, v = qkv(heads=4)
    mask = some_padding() if padded else None
    kernel = HybridAttention(8, 64, local_heads=3, window=4, global_attention=LinearEluAttention).double()
    out = kernel(q, k, v, mask)
    local = naive_softmax(q[:, :3], k[:, :3], v[:, :3], mask, band(23, 4))
    global_ = LinearEluAttention(8, 64)(q[:, 3:], k[:, 3:], v[:, 3:], mask)
    torch.testing.assert_close(out, torch.cat([local, global_], dim=1), rtol=0, atol=1e-12)


def test_hybrid_refuses_more_local_heads_than_the_model_has():
    q, k, v = qkv(heads=2)
    with pytest.raises(UserError, match="local_heads"):
        HybridAttention(8, 64, local_heads=3, global_attention=LinearEluAttention)(q, k, v)


# --- exact attention ---------------------------------------------------------------------------------


@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_equals_naive_softmax(padded):
    q, k, v = qkv()
    mask = some_padding() if padded else None
    torch.testing.assert_close(
        SDPAttention(8, 64)(q, k, v, mask), naive_softmax(q, k, v, mask), rtol=0, atol=1e-12
    )
