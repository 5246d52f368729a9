"""Hybrid attention: exact sliding-window attention on some heads, a linear mechanism on the rest.

The first ``local_heads`` heads attend exactly within a window: token i attends to key j iff
``|i − j| <= window`` and j is a real token (softmax with the usual 1/√d). The remaining heads use a
global linear kernel built from a nested ``_partial_`` kernel config (``global_attention``) with the
same ``head_dim``/``max_seq_len``/``layer_idx``.

Sliding window, two implementations with the same result:

- CUDA: ``flex_attention`` (compiled) with a block mask built directly as a band of key blocks
  around each query block, so building it costs O(seq/block · window/block), never O(seq²);
- otherwise (and with ``backend: blocked``): blocks of ``max(window, 1)`` queries attend to the
  previous, current and next block of keys, then positions with ``|i − j| > window`` are masked.
  Memory O(seq·window); seq × seq is never materialised.

A query with no real key in its window (only possible for a padded query) gets output 0.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from longseq.attention.base import AttentionKernel
from longseq.attention.linear_core import compute_dtype
from longseq.errors import UserError

BACKENDS = ("auto", "flex", "blocked")
FLEX_BLOCK = 128  # flex_attention's default tile; the band is built in units of it

_compiled_flex: Callable[..., torch.Tensor] | None = None


def flex_available() -> bool:
    """Whether ``torch.nn.attention.flex_attention`` can be imported (a recent PyTorch)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def sliding_window_blocked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None, window: int
) -> torch.Tensor:
    """Exact attention over ``|i − j| <= window`` in O(seq·window) memory (any device).

    ``q, k, v`` (batch, heads, seq, head_dim); ``padding_mask`` (batch, seq) or None. Computed in fp32
    (fp64 stays fp64) with autocast off; returns ``q``'s dtype.
    """
    batch, heads, seq, head_dim = q.shape
    block = max(window, 1)
    blocks = math.ceil(seq / block)
    padded = blocks * block
    dtype = compute_dtype(q.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = (x.to(dtype) for x in (q, k, v))
        keep = (
            padding_mask
            if padding_mask is not None
            else torch.ones(batch, seq, dtype=torch.bool, device=q.device)
        )
        # One block of padding on each side of the keys (and to a whole number of blocks at the end),
        # so that query block c finds its neighbours at key blocks c, c+1, c+2 of the padded tensor.
        q = F.pad(q, (0, 0, 0, padded - seq)).view(batch, heads, blocks, block, head_dim)
        k = F.pad(k, (0, 0, block, padded - seq + block))
        v = F.pad(v, (0, 0, block, padded - seq + block))
        keep = F.pad(keep, (block, padded - seq + block), value=False)  # (batch, padded + 2·block)

        def neighbours(
            x: torch.Tensor,
        ) -> torch.Tensor:  # (..., padded + 2·block, ...) -> 3 blocks per query block
            return torch.cat(
                [x.narrow(2, i * block, padded).unflatten(2, (blocks, block)) for i in range(3)], dim=3
            )

        k3 = neighbours(k)  # (batch, heads, blocks, 3·block, head_dim)
        v3 = neighbours(v)
        keep3 = torch.cat(
            [keep.narrow(1, i * block, padded).view(batch, blocks, block) for i in range(3)], dim=2
        )

        # Offsets: query at c·block + a, key at (c−1)·block + b  =>  j − i = b − block − a.
        a = torch.arange(block, device=q.device)[:, None]
        b = torch.arange(3 * block, device=q.device)[None, :]
        in_band = (b - block - a).abs() <= window  # (block, 3·block)
        allowed = in_band & keep3[:, None, :, None, :]  # (batch, 1, blocks, block, 3·block)

        scores = (q @ k3.transpose(-2, -1)) * head_dim**-0.5  # (batch, heads, blocks, block, 3·block)
        # A finite fill (not −inf) so a row with nothing allowed stays finite (its output is zeroed).
        scores = scores.masked_fill(~allowed, torch.finfo(dtype).min)
        out = torch.softmax(scores, dim=-1) @ v3  # (batch, heads, blocks, block, head_dim)
        out = torch.where(
            allowed.any(dim=-1, keepdim=True), out, torch.zeros((), dtype=dtype, device=q.device)
        )
        out = out.reshape(batch, heads, padded, head_dim)[:, :, :seq]
    return out


@functools.lru_cache(maxsize=8)
def _band_blocks(seq: int, window: int, device: torch.device):  # noqa: ANN202 - a flex BlockMask
    """The band of key blocks for ``|i − j| <= window``, without padding (cached: it depends on the
    lengths only, and building it costs O((seq/block)²) integers, ~0.5 GiB at 1M tokens)."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = math.ceil(seq / FLEX_BLOCK)
    reach = math.ceil(window / FLEX_BLOCK)
    rows = torch.arange(blocks, device=device)[:, None]
    cols = rows + torch.arange(-reach, reach + 1, device=device)[None, :]  # (blocks, 2·reach + 1)
    valid = (cols >= 0) & (cols < blocks)
    # Valid indices first, in ascending order; the rest is ignored past kv_num_blocks. BlockMask wants
    # one index column per key block (it densifies with the width as the number of key blocks).
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    band = torch.gather(cols.clamp(0, blocks - 1), 1, order).to(torch.int32)[:, :blocks]
    kv_indices = torch.zeros(blocks, blocks, dtype=torch.int32, device=device)
    kv_indices[:, : band.shape[1]] = band
    kv_num_blocks = valid.sum(dim=1).to(torch.int32)

    def in_window(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202
        return (q_idx - kv_idx).abs() <= window

    return BlockMask.from_kv_blocks(
        kv_num_blocks[None, None],
        kv_indices[None, None],
        BLOCK_SIZE=FLEX_BLOCK,
        mask_mod=in_window,
        seq_lengths=(seq, seq),
    )


def band_block_mask(seq: int, window: int, padding_mask: torch.Tensor | None, device: torch.device):  # noqa: ANN201
    """A flex ``BlockMask`` for ``|i − j| <= window`` and real keys, built as a band of key blocks.

    Query block r needs key blocks r − reach .. r + reach with ``reach = ceil(window / FLEX_BLOCK)``;
    every listed block is partial (the ``mask_mod`` decides per element). Padding only changes the
    ``mask_mod``, so the cached band is reused with a mask_mod that also reads the padding mask.
    """
    band = _band_blocks(seq, window, torch.device(device))
    if padding_mask is None:
        return band

    def in_window_and_real(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202
        return ((q_idx - kv_idx).abs() <= window) & padding_mask[b, kv_idx]

    masked = copy.copy(band)
    masked.mask_mod = in_window_and_real
    return masked


def sliding_window_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor | None,
    window: int,
    compiled: bool = True,
) -> torch.Tensor:
    """Sliding-window attention through ``flex_attention`` (compiled on CUDA; eager is a slow reference)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if compiled:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        fn = _compiled_flex
    block_mask = band_block_mask(q.shape[-2], window, padding_mask, q.device)
    # Autocast off (inputs already in one dtype): an autocast switch is global state that would make
    # the compiled kernel recompile, and past the recompile limit dynamo falls back to eager flex,
    # which materialises seq × seq.
    with torch.autocast(device_type=q.device.type, enabled=False):
        return fn(q, k.to(q.dtype), v.to(q.dtype), block_mask=block_mask)  # rows with no allowed key: 0


class HybridAttention(AttentionKernel):
    """Sliding-window exact heads plus linear global heads.

    Options: ``local_heads`` (how many leading heads are local), ``window`` (half-width),
    ``global_attention`` (a kernel factory: ``factory(head_dim=, max_seq_len=, layer_idx=)``),
    ``backend`` (``auto``: flex on CUDA, blocked elsewhere; ``flex``; ``blocked``).
    """

    exact = False
    quadratic = False

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int,
        layer_idx: int = 0,
        local_heads: int = 2,
        window: int = 256,
        global_attention: Callable[..., AttentionKernel] | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(head_dim, max_seq_len, layer_idx)
        if local_heads < 0:
            raise UserError(
                f"hybrid local_heads must be >= 0, got {local_heads}; set model.attention.local_heads"
            )
        if window < 0:
            raise UserError(f"hybrid window must be >= 0, got {window}; set model.attention.window")
        if backend not in BACKENDS:
            raise UserError(
                f"unknown hybrid backend {backend!r}: set model.attention.backend to one of {', '.join(BACKENDS)}"
            )
        if backend == "flex" and not flex_available():
            raise UserError(
                "hybrid backend 'flex' needs torch.nn.attention.flex_attention (PyTorch >= 2.5); use backend=blocked"
            )
        if global_attention is None:
            raise UserError(
                "hybrid attention needs a global kernel: set model.attention.global_attention to a kernel config "
                "(e.g. {_target_: longseq.attention.linear_elu.LinearEluAttention, _partial_: true})"
            )
        self.local_heads = local_heads
        self.window = window
        self.backend = backend
        self.global_attention = global_attention(
            head_dim=head_dim, max_seq_len=max_seq_len, layer_idx=layer_idx
        )
        if getattr(self.global_attention, "quadratic", False):
            raise UserError(
                f"hybrid global_attention must be a linear kernel, got {type(self.global_attention).__name__} "
                f"(quadratic); choose performer, linformer, linear_elu or cosformer"
            )

    def extra_repr(self) -> str:
        return f"local_heads={self.local_heads}, window={self.window}, backend={self.backend}"

    def _local(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        use_flex = self.backend == "flex" or (self.backend == "auto" and q.is_cuda and flex_available())
        if use_flex:
            return sliding_window_flex(q, k, v, padding_mask, self.window, compiled=q.is_cuda)
        return sliding_window_blocked(q, k, v, padding_mask, self.window)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        heads = q.shape[1]
        if self.local_heads > heads:
            raise UserError(
                f"hybrid attention has local_heads={self.local_heads} but the model has {heads} heads; "
                f"set model.attention.local_heads to at most {heads}"
            )
        h = self.local_heads
        parts = []
        if h > 0:
            parts.append(self._local(q[:, :h], k[:, :h], v[:, :h], padding_mask).to(q.dtype))
        if h < heads:
            # The global kernel sees only its heads; it goes through forward so its checks run too.
            parts.append(self.global_attention(q[:, h:], k[:, h:], v[:, h:], padding_mask).to(q.dtype))
        return torch.cat(parts, dim=1)  # (batch, heads, seq, head_dim)
