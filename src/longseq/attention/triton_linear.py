"""Fused Triton kernels for non-causal normalised linear attention (forward and backward).

The same two stages as :func:`longseq.attention.linear_core.chunked_linear_attention`, each an
``autograd.Function``, so that a sequence-parallel all-reduce can sit between them:

1. state:    ``S = φ(K)ᵀV / count`` (batch, heads, features, head_dim), ``z = Σφ(K) / count`` (fp32);
2. read-out: ``out = φ(Q)·S / clamp(φ(Q)·z)`` (batch, heads, seq, head_dim) in the input dtype.

Feature maps are computed inside the kernels from ``q``/``k`` tiles and never written to memory:

- ``favor``: FAVOR+ ``c·(exp(w·x' − ‖x'‖²/2 − stabiliser) + eps)``, ``x' = d^{-1/4}x``, ``c = 1/√m``
  (the hyperbolic variant is the same map with the rows ``[W; −W]``);
- ``elu``: ``where(x > 0, x + 1, exp(x))``;
- ``cos``: cosFormer ``[relu(x)·cos a_i, relu(x)·sin a_i]``, ``a_i = π·i/(2M)`` (cos a_i and sin a_i are
  read from a (2, seq) table built once per length: computing them in every tile cost more than the
  rest of the feature map).

Work split. The state stage is a reduction over the sequence: one program per (sequence chunk,
batch·head), and per feature block for FAVOR+, writes a partial ``S``/``z`` for its chunk, and one
small combine kernel sums the partials (a few MiB) and applies the count, the FAVOR+ eps part and
the stabiliser rescale, so that a single 1M-token sequence still fills every SM. The FAVOR+ state
forward is flash attention's forward with the roles turned (the W rows of a feature block are the
"queries", loaded once; keys and values stream past). The read-out and the key-side backward are
independent per token. FAVOR+ (and every fp32 path): one program per (token tile, batch·head),
looping over feature blocks, except the FAVOR+ read-out forward in bf16/fp16 (up to
``FAVOR_ONE_BLOCK`` features): one program per (sequence chunk, batch·head) with W and S loaded once
and every feature in one block. elu/cos in bf16/fp16: one program per (sequence chunk, batch·head)
walks the chunk's tiles with the state loaded once, prefetching the next tile into registers
(Triton does not pipeline these loads). The read-out backward is a per-tile ``dq`` kernel, which also
writes ``1/den`` and ``d den`` per query row (8 bytes), then the sequence reduction
``dS = Σ φ(q_i)ᵀ·dO_i/den_i``, ``dz = Σ φ(q_i)·d den_i`` (for cosFormer the state forward's kernel
with per-row weights); for elu+1 in bf16/fp16 it is one pass that does both from one read of q and
dO. Tile length, warps, pipeline depth and prefetching are chosen per (length, sizes, feature map)
by timing each candidate (``_Tuned``); ``LONGSEQ_TRITON_TUNE=0`` fixes one configuration. Every
kernel is deterministic: no atomics, fixed summation orders (a GPU test runs each map three times
and compares bitwise).

Numerics (DESIGN.md): accumulation in fp32 (``tl.dot`` with fp32 accumulators; feature tiles are
rounded to the input dtype only as the operand of a tensor-core product, as flash attention does with
its probabilities), denominators in fp32, the clamp at ``DENOMINATOR_FLOOR`` on the count-normalised
scale exactly as the PyTorch reference. FAVOR+ logits are in log2 units (log2 e folded into W, exp2
in the kernels); stabilisers:

- keys: one max per (batch, head) over real tokens and features, as the reference. Each state
  program keeps a running max per feature over its chunk and rescales that feature's sums when it
  grows (flash attention's online softmax, per row); the combine kernel rescales every partial to
  the overall max. The stabiliser cancels in the ratio, so this is exact. The ``eps`` term is kept
  apart (``eps·Σv``, ``eps·n``) because it must not be rescaled (``Σv``: ``_value_sum_kernel``). Under
  sequence parallelism the max is MAX-reduced over shards (``key_max_reduce``) before the combine;
- queries: the per-row max over features (found online across feature blocks in the per-tile
  read-out; exact in one step in the one-block read-out), saved per row (4 bytes) so the backward
  rebuilds identical features. The ``−‖q'‖²/2`` term is constant per row and cancels against it, so
  it is not computed; its gradient term is kept.

Backward recomputes every feature tile; what is kept is q, k, v, the small states, the output and one
or two fp32 numbers per query row (denominator; FAVOR+ also its row max), so the extra memory is
O(state + seq), never O(seq · features).

On CPU the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` is set before ``triton`` is
imported (the tests do this in a subprocess); that is slow and meant for small correctness checks.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from longseq.attention.linear_core import DENOMINATOR_FLOOR
from longseq.errors import UserError

try:  # Triton is optional: without it (or without CUDA) the PyTorch path runs.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAVE_TRITON = False

def interpreter_on() -> bool:
    """Whether Triton's CPU interpreter was requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


IMPLS = ("auto", "triton", "torch")
FEATURE_KINDS = {"favor": 0, "elu": 1, "cos": 2}
HEAD_DIMS = (16, 32, 64, 128)
# Tokens per tile are autotuned (64 or 128); chunks of the sequence reductions are whole tiles of
# the largest size. The interpreter uses one small configuration.
CHUNK_ALIGN = 64 if interpreter_on() else 128
NEG_BIG = -1.0e30  # "minus infinity" that stays finite, so exp(a − b) of two of them is 1, not NaN
# Tokens per chunk of the sequence reductions when a call does not say; None = enough chunks to fill
# the device. Tests set it to force several chunks at small sizes.
DEFAULT_CHUNK_TOKENS: int | None = None
# The FAVOR+ read-out forward takes every feature in one block up to this many (padded to a power of
# two; W and S stay in the program); beyond that, and in fp32, the per-tile kernel.
FAVOR_ONE_BLOCK = 256
# Tokens per program of the FAVOR+ Σv pass (_value_sum_kernel; 2048 programs at 1M tokens and 8 heads)
# and per load; in the interpreter several blocks of several loads per test sequence.
VALUE_SUM_ROWS, VALUE_SUM_BLOCK = (64, 32) if interpreter_on() else (4096, 256)


@dataclass(frozen=True)
class FeatureSpec:
    """What the kernels need to rebuild a feature map.

    ``kind``: ``favor``, ``elu`` or ``cos``. ``favor``: ``projection`` (rows, head_dim) fp32 random rows
    (unscaled), ``hyperbolic`` (features = ``[W; −W]``), ``eps``. ``cos``: ``horizon`` (M).
    ``key_max_reduce``: optional MAX all-reduce of the (batch, heads) key stabiliser (sequence
    parallelism).
    """

    kind: str
    projection: torch.Tensor | None = None
    hyperbolic: bool = False
    eps: float = 0.0
    horizon: int = 1
    key_max_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def num_features(self, head_dim: int) -> int:
        if self.kind == "favor":
            assert self.projection is not None
            return self.projection.shape[0] * (2 if self.hyperbolic else 1)
        return head_dim if self.kind == "elu" else 2 * head_dim


def unsupported_reason(spec_kind: str, head_dim: int, num_features: int | None = None) -> str | None:
    """Why the fused kernels cannot run this case (None when they can)."""
    if head_dim not in HEAD_DIMS:
        return f"head_dim {head_dim} (the Triton kernels take {', '.join(map(str, HEAD_DIMS))})"
    if spec_kind == "favor" and num_features is not None and num_features % 16:
        return f"num_features {num_features} (the Triton kernels need a multiple of 16)"
    return None


def resolve_impl(impl: str, x: torch.Tensor, reason: str | None, owner: str) -> str:
    """``triton`` or ``torch`` for ``impl`` (auto|triton|torch) on ``x``'s device; a one-line error when
    ``impl=triton`` cannot run. ``reason`` says why the case is unsupported (None when it is)."""
    if impl == "torch":
        return "torch"
    runnable = HAVE_TRITON and (x.is_cuda or (interpreter_on() and x.device.type == "cpu"))
    if impl == "auto":
        return "triton" if runnable and reason is None else "torch"
    if not HAVE_TRITON:
        raise UserError(
            f"{owner} impl=triton needs the triton package (pip install triton); or set "
            f"model.attention.impl=torch|auto"
        )
    if not runnable:
        raise UserError(
            f"{owner} impl=triton needs a CUDA device (or TRITON_INTERPRET=1 for Triton's CPU interpreter, "
            f"small sizes only); got a {x.device.type} tensor: set model.attention.impl=auto or torch"
        )
    if reason is not None:
        raise UserError(f"{owner} impl=triton does not support {reason}; set model.attention.impl=torch or auto")
    return "triton"


def check_impl(impl: str, owner: str) -> str:
    if impl not in IMPLS:
        raise UserError(f"unknown {owner} impl {impl!r}: set model.attention.impl to one of {', '.join(IMPLS)}")
    return impl


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

if HAVE_TRITON:
    # Module constants used inside kernels must be constexpr for Triton.
    _FLOOR = tl.constexpr(DENOMINATOR_FLOOR)
    _NEG = tl.constexpr(NEG_BIG)
    _LN2 = tl.constexpr(LN2)

    def _configs(loop: bool) -> list:
        """Candidate launch configurations. ``loop``: the kernels that walk a chunk of tiles with a
        register prefetch (elu/cos per token, FAVOR+'s dS/dz reduction); they also choose PREFETCH."""
        fixed = {"PREFETCH": 1} if loop else {}
        if interpreter_on():  # 32-token tiles in the loops: several per chunk, so prefetching is exercised
            return [triton.Config({"BLOCK_N": 32 if loop else 64, **fixed}, num_warps=4, num_stages=1)]
        if os.environ.get("LONGSEQ_TRITON_TUNE", "1") == "0":  # one fixed configuration (quick tests)
            return [triton.Config({"BLOCK_N": 64, **fixed}, num_warps=4, num_stages=2)]
        return [
            triton.Config({"BLOCK_N": bn, **({"PREFETCH": pf} if loop else {})}, num_warps=w, num_stages=st)
            for bn in (64, 128) for w in (4, 8) for st in (2, 3) for pf in ((0, 1) if loop else (0,))
        ]

    class _Tuned:
        """``kernel[grid](*args, **constexprs)`` with ``BLOCK_N``/warps/stages chosen once per (length,
        constexprs) by timing each candidate, then cached. Plays the part of ``triton.autotune``, whose
        per-call bookkeeping costs about 40 µs of host time per launch (measured on the H100 host),
        which at short lengths is most of the step. Every tuned kernel overwrites its whole output, so
        the trial runs leave nothing behind. The length is the kernel's ``N`` argument. ``trials`` keeps
        each key's candidate timings (ms), for scripts/ab_triton_linear.py --candidates."""

        loop = False  # which candidate set (_configs)

        def __init__(self, fn) -> None:  # noqa: ANN001
            self.fn, self.n_index, self.best, self.trials = fn, fn.arg_names.index("N"), {}, {}

        def __getitem__(self, grid):  # noqa: ANN001, ANN204
            return functools.partial(self._launch, grid)

        def _launch(self, grid, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            # Keyword order is fixed per call site; a second order would only tune once more.
            key = (args[self.n_index], *kwargs.items())
            cfg = self.best.get(key)
            if cfg is None:
                cfg = self.best[key] = self._choose(grid, args, kwargs, key)
            meta = {**kwargs, **cfg.kwargs}
            g = grid(meta) if callable(grid) else grid
            return self.fn[g](*args, **meta, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

        def _choose(self, grid, args, kwargs, key):  # noqa: ANN001, ANN202
            configs = _configs(self.loop)
            if len(configs) == 1:
                return configs[0]
            timings: dict = {}
            failed = set()
            # Two rounds, each candidate's better median kept: with one round the H100 run picked a read-out
            # backward 20% slower than another candidate at 1M (the first ones timed may run before the
            # clocks settle).
            for _ in range(2):
                for cfg in configs:
                    if cfg in failed:
                        continue
                    meta = {**kwargs, **cfg.kwargs}
                    g = grid(meta) if callable(grid) else grid

                    def call(cfg=cfg, meta=meta, g=g) -> None:
                        self.fn[g](*args, **meta, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

                    try:
                        t = triton.testing.do_bench(call, warmup=10, rep=50, return_mode="median")
                    except Exception:  # noqa: BLE001 - a candidate that does not fit (shared memory, registers)
                        failed.add(cfg)
                        continue
                    timings[cfg] = min(t, timings.get(cfg, t))
            if not timings:
                raise RuntimeError(f"no kernel configuration of {self.fn.__name__} could run")
            self.trials[key] = timings
            return min(timings, key=timings.get)

    class _TunedLoop(_Tuned):
        """``_Tuned`` over the candidates of the kernels that walk a chunk of tiles per program."""

        loop = True

    # Lengths and positions are not specialised on (Triton would otherwise compile a new variant of
    # every candidate whenever their divisibility by 16 changes, i.e. at many sequence lengths).
    _LENGTHS = ["H", "N"]

    @triton.jit
    def _head_base(X, bh, H, stride_b, stride_h):
        """Where (batch, head) ``bh`` = batch·H + head of a (batch, heads, …) tensor starts; stride_h = 0
        for a per-batch tensor (the padding mask)."""
        return X + (bh // H) * stride_b + (bh % H) * stride_h

    @triton.jit
    def _real_rows(mask_base, rows, stop, HAS_MASK: tl.constexpr):
        """Which ``rows`` are real tokens: before ``stop`` and, with a padding mask, not padding."""
        ok = rows < stop
        if HAS_MASK:
            ok = ok & (tl.load(mask_base + rows, mask=ok, other=0) != 0)
        return ok

    @triton.jit
    def _key_chunk(K, V, MASK, bh, chunk, H, N, chunk_len, stride_kb, stride_kh, stride_vb, stride_vh, stride_mb):
        """Where (batch, head) ``bh``'s keys, values and padding mask start, and the token range
        [start, stop) of sequence chunk ``chunk``: the set-up of both state-forward kernels."""
        k_base = _head_base(K, bh, H, stride_kb, stride_kh)
        v_base = _head_base(V, bh, H, stride_vb, stride_vh)
        mask_base = _head_base(MASK, bh, H, stride_mb, 0)
        start = chunk * chunk_len
        return k_base, v_base, mask_base, start, tl.minimum(start + chunk_len, N)

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr):
        # fp32 operands (tests, fp32 training) keep full precision; bf16/fp16 go to the tensor cores.
        if IEEE:
            return tl.dot(a, b, input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _hi_lo_cols(x, dtype: tl.constexpr):
        """(n,) fp32 weights -> (n, 16) in ``dtype``: columns x_hi, x_lo (x split into two parts, so that a
        product with it keeps the weights' fp32 precision), then zeros. ``tile·_hi_lo_cols(x)`` summed over
        columns 0 and 1 (``_hi_lo_sum``) is ``Σ_n tile[:, n]·x_n``: a weighted sum over tokens done by the
        tensor cores rather than one multiply-add per element and a cross-thread reduction."""
        c16 = tl.arange(0, 16)[None, :]
        hi = x.to(dtype).to(tl.float32)
        return tl.where(c16 == 0, hi[:, None], tl.where(c16 == 1, (x - hi)[:, None], 0.0)).to(dtype)

    @triton.jit
    def _hi_lo_sum(acc):
        """Columns 0 + 1 of a (rows, 16) product with ``_hi_lo_cols`` weights."""
        return tl.sum(tl.where(tl.arange(0, 16)[None, :] < 2, acc, 0.0), axis=1)

    @triton.jit
    def _trig(TRIG, half, rows, ok, N, FEAT: tl.constexpr):
        """cosFormer weights of the tokens ``rows``: row ``half`` of the (2, N) table (0: cos a_i,
        1: sin a_i), read rather than computed (sin/cos cost more than the rest of a feature tile);
        zeros for elu+1, which has none."""
        if FEAT == 2:
            return tl.load(TRIG + half * N + rows, mask=ok, other=0.0)
        return tl.zeros(rows.shape, dtype=tl.float32)

    @triton.jit
    def _state_rows(FEAT: tl.constexpr, D: tl.constexpr):
        """Rows of S and z (features) in the order the per-tile elu/cos kernels take them. cosFormer
        interleaves its halves, (cos f, sin f, cos f+1, …): a token's two features of one input
        dimension are then adjacent columns (built with tl.join), and one product over K = 2D replaces
        two latency-bound K = D products."""
        if FEAT == 2:
            t = tl.arange(0, 2 * D)
            rows = (t % 2) * D + t // 2
        else:
            rows = tl.arange(0, D)
        return rows

    @triton.jit
    def _elu_cos_tile(xf, rows, ok, TRIG, N, FEAT: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                      ZERO_ROWS: tl.constexpr):
        """Features (BLOCK_N, M) of the fp32 tile ``xf`` in ``_state_rows`` order, and the tokens' cos a_i,
        sin a_i (zeros for elu+1). ZERO_ROWS: zero the features of rows not ``ok`` (padding keys). The
        query kernels need not: they compute every query row, as the reference does, and store none
        past the end; the cosFormer read-out forward still does, as the compiler then schedules the
        join better (H100, 1M tokens: 0.97 ms with, 1.34 ms without; elu+1 is 0.05 ms faster without)."""
        if FEAT == 1:
            # exp(min(x, 0)): the unselected branch must not overflow (see linear_elu.elu_plus_one)
            phi = tl.where(xf > 0, xf + 1.0, tl.exp(tl.minimum(xf, 0.0)))
            wc = tl.zeros((BLOCK_N,), dtype=tl.float32)
            ws = wc
        else:
            wc = _trig(TRIG, 0, rows, ok, N, FEAT)
            ws = _trig(TRIG, 1, rows, ok, N, FEAT)
            r = tl.maximum(xf, 0.0)
            phi = tl.reshape(tl.join(r * wc[:, None], r * ws[:, None]), (BLOCK_N, 2 * D))
        if ZERO_ROWS:
            phi = tl.where(ok[:, None], phi, 0.0)
        return phi, wc, ws

    @triton.jit
    def _elu_cos_input_grad(dphi, xf, phi, wc, ws, FEAT: tl.constexpr, BLOCK_N: tl.constexpr,
                            D: tl.constexpr):
        """dx (BLOCK_N, D) from dφ (BLOCK_N, M) and what ``_elu_cos_tile`` returned for ``xf``."""
        # One return after the branches: the compiler builds what follows an early return in a
        # constexpr branch too, and the cos reshape does not fit elu's shapes.
        if FEAT == 1:
            dx = dphi * tl.where(xf > 0, 1.0, phi)
        else:
            dc, dsn = tl.split(tl.reshape(dphi, (BLOCK_N, D, 2)))
            dx = tl.where(xf > 0, dc * wc[:, None] + dsn * ws[:, None], 0.0)
        return dx

    @triton.jit
    def _elu_cos_key_grads(kf, v, ok, rows, ds_in, dz, TRIG, N, FEAT: tl.constexpr, BLOCK_N: tl.constexpr,
                           D: tl.constexpr, IEEE: tl.constexpr):
        """Key-side backward of one tile, every feature in one block: dv = φ·dS', dφ = v·dS'ᵀ + dz' (zero
        for padding keys), returned as (dk, dv) in fp32."""
        phi, wc, ws = _elu_cos_tile(kf, rows, ok, TRIG, N, FEAT, BLOCK_N, D, True)
        dv = _dot(phi.to(v.dtype), ds_in, IEEE)
        dphi = tl.where(ok[:, None], _dot(v, tl.trans(ds_in), IEEE) + dz[None, :], 0.0)
        return _elu_cos_input_grad(dphi, kf, phi, wc, ws, FEAT, BLOCK_N, D), dv

    @triton.jit
    def _cos_half(S, Z, bh, cols, h, TRIG, rows, ok, N, M: tl.constexpr, D: tl.constexpr):
        """Half ``h`` (0: cos, 1: sin) of a cosFormer state, (D, D), and of its z, and the tokens'
        weight of that half (cos a_i or sin a_i). The fp32 kernels take the halves one at a time in a
        loop: one K = 2D FMA product, or two in one block, spill."""
        f = h * D + tl.arange(0, D)
        return (tl.load(S + bh * M * D + f[:, None] * D + cols[None, :]), tl.load(Z + bh * M + f),
                _trig(TRIG, h, rows, ok, N, 2))

    @triton.jit
    def _favor_state_tile(acc, zacc, m_run, w, k_base, v_base, mask_base, rows, stop, cols,
                          stride_kn, stride_vn, half_norm_scale,
                          MASKED: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr):
        # Flash attention's forward with the roles turned: the feature rows of W are the "queries",
        # keys the "keys", v the values; the running max is per feature (row of the tile), so the
        # rescale stays within a row. Logits are in log2 units (W and the norm scale carry log2 e).
        if MASKED:
            ok = _real_rows(mask_base, rows, stop, HAS_MASK)
            k = tl.load(k_base + rows[:, None] * stride_kn + cols[None, :], mask=ok[:, None], other=0.0)
            v = tl.load(v_base + rows[:, None] * stride_vn + cols[None, :], mask=ok[:, None], other=0.0)
        else:
            k = tl.load(k_base + rows[:, None] * stride_kn + cols[None, :])
            v = tl.load(v_base + rows[:, None] * stride_vn + cols[None, :])
        kf = k.to(tl.float32)
        half_norm = tl.sum(kf * kf, axis=1) * half_norm_scale  # (BLOCK_N,)
        lt = _dot(w, tl.trans(k), IEEE) - half_norm[None, :]  # (BLOCK_M, BLOCK_N)
        if MASKED:
            lt = tl.where(ok[None, :], lt, _NEG)
        m_new = tl.maximum(m_run, tl.max(lt, axis=1))
        alpha = tl.exp2(m_run - m_new)
        pt = tl.exp2(lt - m_new[:, None])
        if MASKED:  # a feature with no real key yet has m_new = NEG, and exp2(NEG − NEG) = 1
            pt = tl.where(ok[None, :], pt, 0.0)
        acc = acc * alpha[:, None] + _dot(pt.to(v.dtype), v, IEEE)
        zacc = zacc * alpha + tl.sum(pt, axis=1)
        return acc, zacc, m_new

    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len", "num_chunks"])
    def _favor_state_fwd_kernel(
        K, V, MASK, W, S_part, Z_part, M_part,
        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
        H, N, chunk_len, num_chunks, half_norm_scale,
        HAS_MASK: tl.constexpr, D: tl.constexpr, M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        # One program per (feature block, sequence chunk, batch·head) writes the partial sums of its
        # chunk. Feature block is the fastest grid axis, so the programs that read the same keys run
        # together and share them through L2. Nothing but the products' work is in the loop: Σv (the eps
        # term) summed in here, on the programs of the first feature block, cost 1 ms at 1M tokens on the
        # H100 (2.57 against 1.50 ms) and, pipelined, made S differ from run to run; _value_sum_kernel
        # takes it.
        fb = tl.program_id(0)
        chunk = tl.program_id(1)
        bh = tl.program_id(2)
        k_base, v_base, mask_base, start, stop = _key_chunk(K, V, MASK, bh, chunk, H, N, chunk_len, stride_kb,
                                                            stride_kh, stride_vb, stride_vh, stride_mb)
        cols = tl.arange(0, D)
        part = bh * num_chunks + chunk
        fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
        w = tl.load(W + fcols[:, None] * D + cols[None, :])  # (BLOCK_M, D), loaded once
        acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        zacc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        m_run = tl.full((BLOCK_M,), _NEG, tl.float32)
        # Whole tiles without any masking, then the ragged tail (or every tile under a mask).
        if HAS_MASK:
            full_stop = start
        else:
            full_stop = start + (stop - start) // BLOCK_N * BLOCK_N
        for row0 in range(start, full_stop, BLOCK_N):
            acc, zacc, m_run = _favor_state_tile(
                acc, zacc, m_run, w, k_base, v_base, mask_base, row0 + tl.arange(0, BLOCK_N), stop,
                cols, stride_kn, stride_vn, half_norm_scale, False, HAS_MASK, IEEE)
        for row0 in range(full_stop, stop, BLOCK_N):
            acc, zacc, m_run = _favor_state_tile(
                acc, zacc, m_run, w, k_base, v_base, mask_base, row0 + tl.arange(0, BLOCK_N), stop,
                cols, stride_kn, stride_vn, half_norm_scale, True, HAS_MASK, IEEE)
        tl.store(S_part + part * M * D + fcols[:, None] * D + cols[None, :], acc)
        tl.store(Z_part + part * M + fcols, zacc)
        tl.store(M_part + part * M + fcols, m_run)

    @triton.jit(do_not_specialize=_LENGTHS)
    def _value_sum_kernel(
        V, MASK, VS_part, stride_vb, stride_vh, stride_vn, stride_mb, H, N,
        HAS_MASK: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # Σ v_j over the real keys among ROWS tokens (FAVOR+'s eps term), fp32, one program per (block of
        # ROWS, batch·head); the combine kernel sums the blocks. Memory-bound: 0.38 ms at 1M tokens on the
        # H100, about the time to read v (1 GiB there) once; one program per state chunk (264) took about
        # 0.8 ms, torch's sum over the sequence axis 0.47 ms.
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        v_base = _head_base(V, bh, H, stride_vb, stride_vh)
        mask_base = _head_base(MASK, bh, H, stride_mb, 0)
        cols = tl.arange(0, D)
        acc = tl.zeros((D,), dtype=tl.float32)
        for r in range(0, ROWS, BLOCK_N):
            rows = blk * ROWS + r + tl.arange(0, BLOCK_N)
            ok = _real_rows(mask_base, rows, N, HAS_MASK)
            v = tl.load(v_base + rows[:, None] * stride_vn + cols[None, :], mask=ok[:, None], other=0.0)
            acc += tl.sum(v.to(tl.float32), axis=0)
        tl.store(VS_part + (bh * tl.num_programs(0) + blk) * D + cols, acc)

    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len", "num_chunks"])
    def _elu_cos_state_fwd_kernel(
        K, V, MASK, S_part, Z_part, ROW_V, ROW_Z,
        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
        H, N, chunk_len, num_chunks, TRIG,
        FEAT: tl.constexpr, HAS_MASK: tl.constexpr, ROW_W: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # One program per (sequence chunk, batch·head) builds every feature (cos: the cos and sin
        # halves) from one load, transposed (D, BLOCK_N) so the features are the left operand as
        # loaded, and writes the partial sums of its chunk. A kernel apart from FAVOR+'s: fewer
        # arguments, and each costs host time at every launch (about 3 µs on the H100 host), which
        # for the first launch of an eager step is GPU idle time. ROW_W: Σ φ(k_j)ᵀ·ROW_V_j·v_j and
        # Σ φ(k_j)·ROW_Z_j with per-row weights (bh, N) instead of plain sums: the read-out
        # backward's dS = Σ φ(q_i)ᵀ·g_i/den_i and dz = Σ φ(q_i)·dden_i are this reduction with
        # k = q, v = dO.
        chunk = tl.program_id(0)
        bh = tl.program_id(1)
        k_base, v_base, mask_base, start, stop = _key_chunk(K, V, MASK, bh, chunk, H, N, chunk_len, stride_kb,
                                                            stride_kh, stride_vb, stride_vh, stride_mb)
        cols = tl.arange(0, D)
        part = bh * num_chunks + chunk
        # z is a product too (_hi_lo_cols, weights 1 or ROW_Z); the features are the same rounded tiles as
        # S's. Summing each tile's features instead (tl.sum over the tokens) made the cosFormer state
        # forward 0.89 ms against 0.76 ms at 1M tokens on the H100.
        acc = tl.zeros((D, D), dtype=tl.float32)
        zacc = tl.zeros((D, 16), dtype=tl.float32)
        acc2 = tl.zeros((D, D), dtype=tl.float32)  # cos: the sin half
        zacc2 = tl.zeros((D, 16), dtype=tl.float32)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            ok = _real_rows(mask_base, rows, stop, HAS_MASK)
            kt = tl.load(k_base + rows[None, :] * stride_kn + cols[:, None], mask=ok[None, :], other=0.0)
            v = tl.load(v_base + rows[:, None] * stride_vn + cols[None, :], mask=ok[:, None], other=0.0)
            if ROW_W:
                wv = tl.load(ROW_V + bh * N + rows, mask=ok, other=0.0)
                wz = tl.load(ROW_Z + bh * N + rows, mask=ok, other=0.0)
                v = (v.to(tl.float32) * wv[:, None]).to(v.dtype)
            else:
                wz = tl.full((BLOCK_N,), 1.0, tl.float32)
            zw = _hi_lo_cols(wz, v.dtype)
            xf = kt.to(tl.float32)
            if FEAT == 1:
                pt = tl.where(ok[None, :], tl.where(xf > 0, xf + 1.0, tl.exp(tl.minimum(xf, 0.0))), 0.0).to(v.dtype)
                acc += _dot(pt, v, IEEE)
                zacc += _dot(pt, zw, IEEE)
            else:
                r = tl.where(ok[None, :], tl.maximum(xf, 0.0), 0.0)
                pc = (r * _trig(TRIG, 0, rows, ok, N, FEAT)[None, :]).to(v.dtype)
                ps = (r * _trig(TRIG, 1, rows, ok, N, FEAT)[None, :]).to(v.dtype)
                acc += _dot(pc, v, IEEE)
                acc2 += _dot(ps, v, IEEE)
                zacc += _dot(pc, zw, IEEE)
                zacc2 += _dot(ps, zw, IEEE)
        fcols = tl.arange(0, D)
        tl.store(S_part + part * M * D + fcols[:, None] * D + cols[None, :], acc)
        tl.store(Z_part + part * M + fcols, _hi_lo_sum(zacc))
        if FEAT == 2:
            tl.store(S_part + part * M * D + (D + fcols[:, None]) * D + cols[None, :], acc2)
            tl.store(Z_part + part * M + D + fcols, _hi_lo_sum(zacc2))

    @triton.jit(do_not_specialize=["H", "num_chunks", "num_vs"])
    def _combine_kernel(
        S_part, Z_part, M_part, VS_part, KMAX, COUNT, NREAL, S, Z,
        H, num_chunks, num_vs, count_s, nreal_s, eps, c,
        RESCALE: tl.constexpr, FAVOR_EPS: tl.constexpr, PER_BATCH: tl.constexpr,
        D: tl.constexpr, M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # Sum of the chunks' partial states of one block of features, BLOCK_C chunks per step (one
        # (BLOCK_C, BLOCK_M, D) load, then a sum over the chunk axis: the loads of a step are in flight
        # together; one chunk per step left the kernel waiting on memory, 25-42 µs at 1M tokens for a
        # few MiB). Fixed order, so deterministic. RESCALE: each partial is rescaled from its own
        # per-feature max to the key max KMAX (FAVOR+). Then the FAVOR+ eps part (c·eps·Σv, c·eps·n;
        # Σv from the num_vs blocks of _value_sum_kernel) and the division by the real-token count.
        fb = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        cols = tl.arange(0, D)
        fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        zacc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if RESCALE:
            kmax = tl.load(KMAX + bh)
        for c0 in range(0, num_chunks, BLOCK_C):
            chunk = c0 + tl.arange(0, BLOCK_C)
            ok = chunk < num_chunks
            part = bh * num_chunks + chunk  # (BLOCK_C,)
            s = tl.load(S_part + part[:, None, None] * (M * D) + fcols[None, :, None] * D + cols[None, None, :],
                        mask=ok[:, None, None], other=0.0)
            z = tl.load(Z_part + part[:, None] * M + fcols[None, :], mask=ok[:, None], other=0.0)
            if RESCALE:
                # ≤ 1: kmax is the max over every chunk (and shard); a chunk with no real key has
                # NEG maxima and zero sums, as do the masked-off chunk slots.
                scale = tl.exp2(tl.load(M_part + part[:, None] * M + fcols[None, :], mask=ok[:, None],
                                        other=_NEG) - kmax)
                s = s * scale[:, :, None]
                z = z * scale
            acc += tl.sum(s, axis=0)
            zacc += tl.sum(z, axis=0)
        if PER_BATCH:
            count = tl.load(COUNT + b)
            nreal = tl.load(NREAL + b)
        else:
            count = count_s
            nreal = nreal_s
        if FAVOR_EPS:
            vacc = tl.zeros((D,), dtype=tl.float32)
            for c0 in range(0, num_vs, BLOCK_C):
                blk = c0 + tl.arange(0, BLOCK_C)
                vacc += tl.sum(tl.load(VS_part + (bh * num_vs + blk)[:, None] * D + cols[None, :],
                                       mask=(blk < num_vs)[:, None], other=0.0), axis=0)
            acc = c * (acc + eps * vacc[None, :])
            zacc = c * (zacc + eps * nreal)
        tl.store(S + bh * M * D + fcols[:, None] * D + cols[None, :], acc / count)
        tl.store(Z + bh * M + fcols, zacc / count)

    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS)
    def _state_bwd_kernel(
        K, V, MASK, W, KMAX, DS, DZ, DVS, DK, DV,
        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
        H, N,
        half_norm_scale, TRIG,
        FEAT: tl.constexpr, HAS_MASK: tl.constexpr, D: tl.constexpr,
        M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # S = c/count·(Σ_j core_j v_jᵀ + eps·Σ_j v_j), z = c/count·(Σ_j core_j + eps·n) over real keys j
        # (elu/cos: c = 1, eps = 0, core = φ). With dS' = c/count·dS (DS, in k's dtype), dz' = c/count·dz
        # (DZ) and DVS = eps·Σ_f dS'_f (bh, D), all prepared once by the caller:
        # dv_j = core_j·dS' + eps·Σ_f dS'_f, d core_j = dS'·v_j + dz'.
        tile = tl.program_id(0)
        bh = tl.program_id(1)
        cols = tl.arange(0, D)
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = rows < N
        ok = _real_rows(_head_base(MASK, bh, H, stride_mb, 0), rows, N, HAS_MASK)
        k = tl.load(_head_base(K, bh, H, stride_kb, stride_kh) + rows[:, None] * stride_kn + cols[None, :],
                    mask=ok[:, None], other=0.0)
        v = tl.load(_head_base(V, bh, H, stride_vb, stride_vh) + rows[:, None] * stride_vn + cols[None, :],
                    mask=ok[:, None], other=0.0)
        kf = k.to(tl.float32)
        if FEAT == 0:
            dv = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            dx = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            dl_rows = tl.zeros((BLOCK_N,), dtype=tl.float32)
            # −‖k'‖²/2 and the key max in one per-row offset: one subtraction per (token, feature).
            row_off = tl.sum(kf * kf, axis=1) * half_norm_scale + tl.load(KMAX + bh)
            for fb in range(M // BLOCK_M):
                fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
                ds_in = tl.load(DS + bh * M * D + fcols[:, None] * D + cols[None, :])  # (BLOCK_M, D)
                dz = tl.load(DZ + bh * M + fcols)
                w = tl.load(W + fcols[:, None] * D + cols[None, :])  # (BLOCK_M, D)
                # Padded rows are zeroed keys whose logits may exceed the max: clamped, so they stay
                # finite. Every product here is row by row, so their rows are zeroed once, at the end.
                core = tl.exp2(tl.minimum(_dot(k, tl.trans(w), IEEE) - row_off[:, None], 0.0))
                dv += _dot(core.to(v.dtype), ds_in, IEEE)
                dl = (_dot(v, tl.trans(ds_in), IEEE) + dz[None, :]) * core
                dx += _dot(dl.to(w.dtype), w, IEEE)
                dl_rows += tl.sum(dl, axis=1)
            # W carries log2 e (ln 2 undoes it); the −‖k'‖²/2 term contributes −Σ_f dl_f·k/√d.
            dx = tl.where(ok[:, None], dx * _LN2 - dl_rows[:, None] * (2.0 * _LN2 * half_norm_scale) * kf, 0.0)
            dv = tl.where(ok[:, None], dv + tl.load(DVS + bh * D + cols)[None, :], 0.0)
        elif FEAT == 2 and IEEE:  # fp32: one half at a time (_cos_half)
            r = tl.where(ok[:, None], tl.maximum(kf, 0.0), 0.0)
            dv = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            dx = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            for h in range(2):
                sh, zh, wh = _cos_half(DS, DZ, bh, cols, h, TRIG, rows, inside, N, M, D)
                dv += wh[:, None] * _dot(r, sh, IEEE)
                dphi = _dot(v, tl.trans(sh), IEEE) + zh[None, :]
                dx += tl.where(ok[:, None] & (kf > 0), wh[:, None] * dphi, 0.0)
        else:  # every feature in one block: dv = φ·dS', dφ = v·dS'ᵀ + dz'
            t = _state_rows(FEAT, D)
            ds_in = tl.load(DS + bh * M * D + t[:, None] * D + cols[None, :])  # (M, D)
            dz = tl.load(DZ + bh * M + t)
            dx, dv = _elu_cos_key_grads(kf, v, ok, rows, ds_in, dz, TRIG, N, FEAT, BLOCK_N, D, IEEE)
        out = bh * N * D + rows[:, None] * D + cols[None, :]
        tl.store(DK + out, dx.to(DK.dtype.element_ty), mask=inside[:, None])
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=inside[:, None])

    @triton.jit
    def _query_tile(Q, stride_qb, stride_qh, stride_qn, H, N, D: tl.constexpr, BLOCK_N: tl.constexpr):
        """Start of the per-tile kernels, one program per (token tile, batch·head): ``bh``, the tile's
        rows, which of them are inside the sequence, the head_dim columns and q's tile (zeros outside)."""
        bh = tl.program_id(1)
        cols = tl.arange(0, D)
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = rows < N
        q = tl.load(_head_base(Q, bh, H, stride_qb, stride_qh) + rows[:, None] * stride_qn + cols[None, :],
                    mask=inside[:, None], other=0.0)
        return bh, rows, inside, cols, q

    @triton.jit
    def _readout_store(OUT, DEN, acc, den, bh, rows, inside, cols, N):
        """Every read-out forward's end: the denominator kept for the backward (4 bytes a row) and
        ``out = acc / clamp(den)`` in the output's dtype."""
        D: tl.constexpr = cols.shape[0]
        tl.store(DEN + bh * N + rows, den, mask=inside)
        out = acc / tl.maximum(den, _FLOOR)[:, None]
        tl.store(OUT + bh * N * D + rows[:, None] * D + cols[None, :], out.to(OUT.dtype.element_ty),
                 mask=inside[:, None])

    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS)
    def _readout_fwd_kernel(
        Q, W, S, Z, SCOL, ZSUM, OUT, DEN, MROW,
        stride_qb, stride_qh, stride_qn,
        H, N,
        TRIG, eps, c,
        FEAT: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # One program per (token tile, batch·head), looping over feature blocks. FAVOR+: the query
        # stabiliser is the row max over features, found online as flash attention does over keys. The
        # −‖q'‖²/2 term is constant per row, so it cancels against that max and is not computed (its
        # gradient is added in the backward, as the reference has it). elu/cos: every feature in one block
        # (BLOCK_M unused; fp32 cosFormer: one half at a time).
        bh, rows, inside, cols, q = _query_tile(Q, stride_qb, stride_qh, stride_qn, H, N, D, BLOCK_N)
        if FEAT == 0:
            acc = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            den = tl.zeros((BLOCK_N,), dtype=tl.float32)
            m_row = tl.full((BLOCK_N,), _NEG, dtype=tl.float32)
            for fb in range(M // BLOCK_M):
                fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
                s = tl.load(S + bh * M * D + fcols[:, None] * D + cols[None, :])  # (BLOCK_M, D), q's dtype
                z = tl.load(Z + bh * M + fcols)
                w = tl.load(W + fcols[:, None] * D + cols[None, :])
                lg = _dot(q, tl.trans(w), IEEE)  # (BLOCK_N, BLOCK_M), log2 units
                m_new = tl.maximum(m_row, tl.max(lg, axis=1))
                alpha = tl.exp2(m_row - m_new)
                p = tl.exp2(lg - m_new[:, None])
                acc = acc * alpha[:, None] + _dot(p.to(q.dtype), s, IEEE)
                den = den * alpha + tl.sum(p * z[None, :], axis=1)
                m_row = m_new
        elif FEAT == 2 and IEEE:  # fp32: one half at a time (_cos_half)
            r = tl.maximum(q.to(tl.float32), 0.0)
            acc = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            den = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for h in range(2):
                sh, zh, wh = _cos_half(S, Z, bh, cols, h, TRIG, rows, inside, N, M, D)
                acc += wh[:, None] * _dot(r, sh, IEEE)
                den += wh * tl.sum(r * zh[None, :], axis=1)
        else:  # every feature in one block
            t = _state_rows(FEAT, D)
            s = tl.load(S + bh * M * D + t[:, None] * D + cols[None, :])  # (M, D)
            z = tl.load(Z + bh * M + t)
            p, _, _ = _elu_cos_tile(q.to(tl.float32), rows, inside, TRIG, N, FEAT, BLOCK_N, D,
                                    FEAT == 2)
            acc = _dot(p.to(q.dtype), s, IEEE)
            den = tl.sum(p * z[None, :], axis=1)
        if FEAT == 0:
            acc = c * (acc + eps * tl.load(SCOL + bh * D + cols)[None, :])
            den = c * (den + eps * tl.load(ZSUM + bh))
            tl.store(MROW + bh * N + rows, m_row, mask=inside)
        _readout_store(OUT, DEN, acc, den, bh, rows, inside, cols, N)

    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len"])
    def _favor_readout_fwd_kernel(
        Q, W, S, Z, SCOL, ZSUM, OUT, DEN, MROW,
        stride_qb, stride_qh, stride_qn,
        H, N, chunk_len, eps, c,
        D: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # FAVOR+ read-out forward in bf16/fp16 with at most FAVOR_ONE_BLOCK features: one program per
        # (sequence chunk, batch·head) loads W and S once and walks the chunk's query tiles, every
        # feature in one block (MP = M rounded up to a power of two, the extra features masked out), so
        # the row max is exact at once (no online rescale) and only q's tiles stream through the loop.
        # H100, 1M tokens: 1.58-1.61 ms against 1.93-2.02 ms for the per-tile kernel, which reloads W and
        # S (64 KiB) from L2 for every 64-token tile. The backward kernels did not gain from this shape:
        # with all features in one block the dq kernel spills ~900 bytes, and with the feature blocks
        # unrolled in a chunk loop dq and the state backward ran slower (4.1 and 3.3 ms against 2.5, 3.0).
        chunk = tl.program_id(0)
        bh = tl.program_id(1)
        cols = tl.arange(0, D)
        f = tl.arange(0, MP)
        real_f = f < M
        w = tl.load(W + f[:, None] * D + cols[None, :], mask=real_f[:, None], other=0.0)
        s = tl.load(S + bh * M * D + f[:, None] * D + cols[None, :], mask=real_f[:, None], other=0.0)
        z = tl.load(Z + bh * M + f, mask=real_f, other=0.0)
        # den is a product too (_hi_lo_cols), so the features feed the numerator and the denominator
        # rounded alike. H100, 1M tokens: 1.36-1.43 ms against 1.57-1.65 ms with Σ_f φ_f·z_f summed per
        # element (two rounds in one process).
        zw = _hi_lo_cols(z, Q.dtype.element_ty)
        scol = tl.load(SCOL + bh * D + cols)
        zsum = tl.load(ZSUM + bh)
        q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            inside = rows < stop
            q = _q_tile_load(q_base, row0, stop, stride_qn, cols, BLOCK_N)
            lg = _dot(q, tl.trans(w), IEEE)  # (BLOCK_N, MP), log2 units
            if MP != M:
                lg = tl.where(real_f[None, :], lg, _NEG)
            m_row = tl.max(lg, axis=1)
            p = tl.exp2(lg - m_row[:, None]).to(q.dtype)
            acc = c * (_dot(p, s, IEEE) + eps * scol[None, :])
            den = c * (_hi_lo_sum(_dot(p, zw, IEEE)) + eps * zsum)
            tl.store(MROW + bh * N + rows, m_row, mask=inside)
            _readout_store(OUT, DEN, acc, den, bh, rows, inside, cols, N)

    @triton.jit
    def _readout_row_grads(G, OUT, DEN, ROW_V, ROW_Z, io, bh, rows, inside, N):
        """Read-out backward per query row from dO, the output and the saved denominator (``io``: the
        tile's offsets): returns d num = dO/den, d den = −dO·out/den (0 where the clamp was active)
        and dO·out where the clamp was active (else 0), and writes 1/den and d den, the per-row
        weights of the dS/dz reduction."""
        g = tl.load(G + io, mask=inside[:, None], other=0.0).to(tl.float32)
        o = tl.load(OUT + io, mask=inside[:, None], other=0.0).to(tl.float32)
        den = tl.load(DEN + bh * N + rows, mask=inside, other=1.0)
        rden = 1.0 / tl.maximum(den, _FLOOR)
        go = tl.sum(g * o, axis=1)
        clamped = den < _FLOOR
        dden = tl.where(clamped, 0.0, -go * rden)
        tl.store(ROW_V + bh * N + rows, rden, mask=inside)
        tl.store(ROW_Z + bh * N + rows, dden, mask=inside)
        return g * rden[:, None], dden, tl.where(clamped, go, 0.0)

    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS)
    def _favor_readout_bwd_dq_kernel(
        Q, W, S, Z, SCOL, ZSUM, G, OUT, DEN, MROW, DQ, ROW_V, ROW_Z,
        stride_qb, stride_qh, stride_qn,
        H, N,
        half_norm_scale, eps, c,
        D: tl.constexpr, M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # num_i = Σ_f φ_if S_f, den_i = Σ_f φ_if z_f with φ = c·(core + eps):
        # d core_if = c·(S_f·dnum_i + z_f·dden_i), dl = d core·core. Also writes 1/den_i and dden_i per
        # row for the dS/dz reduction (_favor_readout_bwd_dstate_kernel), which then need not read out.
        # Σ_f dl_if (the gradient of the row's −‖q'‖²/2 term) needs no sum over features: it is
        # dnum·(num − c·eps·ΣS) + dden·(den − c·eps·Σz), and dnum·num + dden·den = dO·out − dO·out = 0
        # unless the clamp was active (then dden = 0 and dO·out is left), so
        # Σ_f dl_if = −c·eps·(dnum·ΣS + dden·Σz) [+ dO·out if clamped]: the output does not change
        # when a row's features all scale alike, except through eps. Exact, and without the
        # cancellation of the summed form; one add per (token, feature) less in the loop.
        bh, rows, inside, cols, q = _query_tile(Q, stride_qb, stride_qh, stride_qn, H, N, D, BLOCK_N)
        io = bh * N * D + rows[:, None] * D + cols[None, :]
        dnum, dden, go_clamped = _readout_row_grads(G, OUT, DEN, ROW_V, ROW_Z, io, bh, rows, inside, N)
        dl_rows = go_clamped - (c * eps) * (tl.sum(dnum * tl.load(SCOL + bh * D + cols)[None, :], axis=1)
                                            + dden * tl.load(ZSUM + bh))
        m_row = tl.load(MROW + bh * N + rows, mask=inside, other=0.0)
        dnum_in = (c * dnum).to(q.dtype)
        dden = c * dden
        # W carries log2 e (the final ·ln 2 undoes it); the −‖q'‖²/2 term contributes −Σ_f dl_f·q/√d,
        # put in the accumulator's start so that nothing but dx lives through the loop.
        dx = dl_rows[:, None] * (-2.0 * half_norm_scale / _LN2) * q.to(tl.float32)
        for fb in range(M // BLOCK_M):
            fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
            w = tl.load(W + fcols[:, None] * D + cols[None, :])
            s = tl.load(S + bh * M * D + fcols[:, None] * D + cols[None, :])
            z = tl.load(Z + bh * M + fcols)
            core = tl.exp2(_dot(q, tl.trans(w), IEEE) - m_row[:, None])
            dl = (_dot(dnum_in, tl.trans(s), IEEE) + dden[:, None] * z[None, :]) * core
            dx += _dot(dl.to(w.dtype), w, IEEE)
        dx = dx * _LN2
        tl.store(DQ + io, dx.to(DQ.dtype.element_ty), mask=inside[:, None])

    @triton.jit
    def _favor_dstate_row_loads(G, ROW_V, ROW_Z, MROW, bh, row0, stop, N, cols, BLOCK_N: tl.constexpr):
        """dO tile and the per-row 1/den, d den and minus the stabiliser of the rows from ``row0`` (zeros
        past ``stop``)."""
        D: tl.constexpr = cols.shape[0]
        rows = row0 + tl.arange(0, BLOCK_N)
        inside = rows < stop
        g = tl.load(G + bh * N * D + rows[:, None] * D + cols[None, :], mask=inside[:, None], other=0.0)
        rv = tl.load(ROW_V + bh * N + rows, mask=inside, other=0.0)
        dden = tl.load(ROW_Z + bh * N + rows, mask=inside, other=0.0)
        neg_m = -tl.load(MROW + bh * N + rows, mask=inside, other=0.0)
        return g, rv, dden, neg_m

    @_TunedLoop
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len", "num_chunks"])
    def _favor_readout_bwd_dstate_kernel(
        Q, W, G, MROW, ROW_V, ROW_Z, DS_part, DZ_part,
        stride_qb, stride_qh, stride_qn,
        H, N, chunk_len, num_chunks,
        eps, c,
        D: tl.constexpr, M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        # dS_f = Σ_i φ_if dnum_i, dz_f = Σ_i φ_if dden_i over one chunk of queries, one program per
        # (feature block, chunk, batch·head) with its W rows loaded once; features built transposed
        # (BLOCK_M, BLOCK_N) so they are the left operand as computed. dnum_i = g_i/den_i and dden_i
        # come from the per-row values the dq kernel wrote. Rows past the chunk load 0 and add nothing.
        fb = tl.program_id(0)
        chunk = tl.program_id(1)
        bh = tl.program_id(2)
        cols = tl.arange(0, D)
        q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
        w = tl.load(W + fcols[:, None] * D + cols[None, :])
        acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        # dz is a product too (_hi_lo_cols, weights dden): only the features are rounded, as for dS.
        # H100, 1M tokens: 1.77-1.84 ms against 1.87-1.96 ms summed per element (two rounds, one process).
        zacc = tl.zeros((BLOCK_M, 16), dtype=tl.float32)
        # dO and the row values feed element-wise work before the product, so Triton does not pipeline
        # their loads: with PREFETCH (tuned) they are loaded one tile ahead, in registers (H100, 1M tokens:
        # 1.85 against 2.04 ms). The same prefetch of k and v in the FAVOR+ state forward measured slower
        # (2.54 against 2.17 ms) and is not used there.
        if PREFETCH:
            g_nx, rv_nx, dden_nx, neg_m_nx = _favor_dstate_row_loads(G, ROW_V, ROW_Z, MROW, bh, start, stop, N,
                                                                     cols, BLOCK_N)
        for row0 in range(start, stop, BLOCK_N):
            q = _q_tile_load(q_base, row0, stop, stride_qn, cols, BLOCK_N)
            if PREFETCH:
                g, rv, dden, neg_m = g_nx, rv_nx, dden_nx, neg_m_nx
                g_nx, rv_nx, dden_nx, neg_m_nx = _favor_dstate_row_loads(G, ROW_V, ROW_Z, MROW, bh, row0 + BLOCK_N,
                                                                         stop, N, cols, BLOCK_N)
            else:
                g, rv, dden, neg_m = _favor_dstate_row_loads(G, ROW_V, ROW_Z, MROW, bh, row0, stop, N, cols, BLOCK_N)
            # −m as the logits' accumulator start (with the z product: 142 registers at 8 warps for 185 with
            # "dot − m", and no spill at 4 warps; sm_90a compile); c·(core + eps) as one fused multiply-add.
            pt = tl.exp2(_dot(w, tl.trans(q), IEEE) + neg_m[None, :]) * c + c * eps  # (BLOCK_M, BLOCK_N)
            dnum = (g.to(tl.float32) * rv[:, None]).to(q.dtype)
            zw = _hi_lo_cols(dden, q.dtype)
            pt = pt.to(q.dtype)
            acc += _dot(pt, dnum, IEEE)
            zacc += _dot(pt, zw, IEEE)
        part = bh * num_chunks + chunk
        tl.store(DS_part + part * M * D + fcols[:, None] * D + cols[None, :], acc)
        tl.store(DZ_part + part * M + fcols, _hi_lo_sum(zacc))

    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS)
    def _elu_cos_readout_bwd_dq_kernel(
        Q, S, Z, G, OUT, DEN, DQ, ROW_V, ROW_Z,
        stride_qb, stride_qh, stride_qn,
        H, N,
        TRIG,
        FEAT: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # One program per (token tile, batch·head): dq = dφ·φ'(q) with dφ = dnum·Sᵀ + dden·z, from q, dO
        # and the output and denominator saved by the forward (reading them back measured faster on the
        # H100 than recomputing them: 1.6 vs 2.5 ms at 1M for elu+1). Also writes 1/den_i and dden_i per
        # row, so that dS, dz are the state forward's reduction with per-row weights (ROW_W).
        bh, rows, inside, cols, q = _query_tile(Q, stride_qb, stride_qh, stride_qn, H, N, D, BLOCK_N)
        io = bh * N * D + rows[:, None] * D + cols[None, :]
        dnum, dden, _ = _readout_row_grads(G, OUT, DEN, ROW_V, ROW_Z, io, bh, rows, inside, N)
        dnum_in = dnum.to(Q.dtype.element_ty)
        xf = q.to(tl.float32)
        if FEAT == 2 and IEEE:  # fp32: one half at a time (_cos_half)
            dx = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            for h in range(2):
                sh, zh, wh = _cos_half(S, Z, bh, cols, h, TRIG, rows, inside, N, M, D)
                dphi = _dot(dnum_in, tl.trans(sh), IEEE) + dden[:, None] * zh[None, :]
                dx += tl.where(xf > 0, wh[:, None] * dphi, 0.0)
        else:
            t = _state_rows(FEAT, D)
            s = tl.load(S + bh * M * D + t[:, None] * D + cols[None, :])  # (M, D)
            z = tl.load(Z + bh * M + t)
            dphi = _dot(dnum_in, tl.trans(s), IEEE) + dden[:, None] * z[None, :]  # (BLOCK_N, M)
            phi, wc, ws = _elu_cos_tile(xf, rows, inside, TRIG, N, FEAT, BLOCK_N, D, False)
            dx = _elu_cos_input_grad(dphi, xf, phi, wc, ws, FEAT, BLOCK_N, D)
        tl.store(DQ + io, dx.to(DQ.dtype.element_ty), mask=inside[:, None])


    # elu+1 and cosFormer, per token: one program per (sequence chunk, batch·head) walks the chunk's
    # tiles with the state loaded once. Triton does not pipeline these loops' loads (they feed element-
    # wise work, not a product directly), so with PREFETCH (tuned) each iteration first issues the next
    # tile's loads and then works on the current one, as a two-stage pipeline in registers. Measured
    # on the H100 at 1M tokens (bf16) against one program per tile: read-out forward elu 0.85 -> 0.78 ms,
    # cos 0.97 -> 0.81; key-side backward cos 1.84 -> 1.57; and the one-pass read-out backward below.

    @triton.jit
    def _q_tile_load(q_base, row0, stop, stride_qn, cols, BLOCK_N: tl.constexpr):
        rows = row0 + tl.arange(0, BLOCK_N)
        return tl.load(q_base + rows[:, None] * stride_qn + cols[None, :], mask=(rows < stop)[:, None], other=0.0)

    @triton.jit
    def _kv_tile_loads(k_base, v_base, mask_base, row0, stop, stride_kn, stride_vn, cols,
                       HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr):
        """k and v tiles of the rows from ``row0`` (zeros for padding and rows past ``stop``) and which
        rows are real keys."""
        rows = row0 + tl.arange(0, BLOCK_N)
        ok = _real_rows(mask_base, rows, stop, HAS_MASK)
        k = tl.load(k_base + rows[:, None] * stride_kn + cols[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vn + cols[None, :], mask=ok[:, None], other=0.0)
        return k, v, ok

    @triton.jit
    def _bwd_tile_loads(q_base, G, OUT, DEN, bh, row0, stop, stride_qn, N, cols, BLOCK_N: tl.constexpr):
        """q, dO and the output tiles of the rows from ``row0`` and their saved denominators (zeros and
        ones past ``stop``)."""
        D: tl.constexpr = cols.shape[0]
        rows = row0 + tl.arange(0, BLOCK_N)
        inside = rows < stop
        io = bh * N * D + rows[:, None] * D + cols[None, :]
        q = _q_tile_load(q_base, row0, stop, stride_qn, cols, BLOCK_N)
        g = tl.load(G + io, mask=inside[:, None], other=0.0)
        o = tl.load(OUT + io, mask=inside[:, None], other=0.0)
        den = tl.load(DEN + bh * N + rows, mask=inside, other=1.0)
        return q, g, o, den

    @_TunedLoop
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len"])
    def _elu_cos_readout_fwd_kernel(
        Q, S, Z, OUT, DEN,
        stride_qb, stride_qh, stride_qn,
        H, N, chunk_len,
        TRIG,
        FEAT: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_N: tl.constexpr, IEEE: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        # out = φ(q)·S / clamp(φ(q)·z) for one chunk of queries, every feature in one block (bf16/fp16:
        # fp32 takes the per-tile _readout_fwd_kernel). Writes the denominator (4 bytes a row).
        chunk = tl.program_id(0)
        bh = tl.program_id(1)
        q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
        cols = tl.arange(0, D)
        t = _state_rows(FEAT, D)
        s = tl.load(S + bh * M * D + t[:, None] * D + cols[None, :])  # (M, D), q's dtype
        z = tl.load(Z + bh * M + t)
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        if PREFETCH:
            q_next = _q_tile_load(q_base, start, stop, stride_qn, cols, BLOCK_N)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            inside = rows < stop
            if PREFETCH:
                q = q_next
                q_next = _q_tile_load(q_base, row0 + BLOCK_N, stop, stride_qn, cols, BLOCK_N)
            else:
                q = _q_tile_load(q_base, row0, stop, stride_qn, cols, BLOCK_N)
            p, _, _ = _elu_cos_tile(q.to(tl.float32), rows, inside, TRIG, N, FEAT, BLOCK_N, D, FEAT == 2)
            acc = _dot(p.to(q.dtype), s, IEEE)
            den = tl.sum(p * z[None, :], axis=1)
            _readout_store(OUT, DEN, acc, den, bh, rows, inside, cols, N)

    @_TunedLoop
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len", "num_chunks"])
    def _elu_readout_bwd_kernel(
        Q, S, Z, G, OUT, DEN, DQ, DS_part, DZ_part,
        stride_qb, stride_qh, stride_qn,
        H, N, chunk_len, num_chunks,
        D: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        # elu+1 (bf16/fp16): the whole read-out backward in one pass over a chunk of queries, so q and dO
        # are read once. Per tile, with dnum = dO/den and dden = −dO·out/den from the saved output and
        # denominator: dq = dφ·φ'(q), dφ = dnum·Sᵀ + dden·z, and the chunk's partial dS = Σ φ(q_i)ᵀ·dnum_i,
        # dz = Σ φ(q_i)·dden_i (summed by the combine kernel). Rows past the chunk load dO = 0: they add
        # nothing and store no dq. H100, 1M tokens: 1.65 ms against 2.34 for the dq kernel and the
        # weighted reduction; for cosFormer the same pass measured 3.2 ms against 2.5, so it keeps those.
        chunk = tl.program_id(0)
        bh = tl.program_id(1)
        q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
        cols = tl.arange(0, D)
        s = tl.load(S + bh * D * D + cols[:, None] * D + cols[None, :])  # (D, D), q's dtype
        z = tl.load(Z + bh * D + cols)
        acc = tl.zeros((D, D), dtype=tl.float32)
        zacc = tl.zeros((D,), dtype=tl.float32)
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        if PREFETCH:
            q_next, g_next, o_next, den_next = _bwd_tile_loads(q_base, G, OUT, DEN, bh, start, stop, stride_qn, N,
                                                               cols, BLOCK_N)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            inside = rows < stop
            if PREFETCH:
                q, g, o, den = q_next, g_next, o_next, den_next
                q_next, g_next, o_next, den_next = _bwd_tile_loads(q_base, G, OUT, DEN, bh, row0 + BLOCK_N, stop,
                                                                   stride_qn, N, cols, BLOCK_N)
            else:
                q, g, o, den = _bwd_tile_loads(q_base, G, OUT, DEN, bh, row0, stop, stride_qn, N, cols, BLOCK_N)
            gf = g.to(tl.float32)
            rden = 1.0 / tl.maximum(den, _FLOOR)
            dden = tl.where(den < _FLOOR, 0.0, -tl.sum(gf * o.to(tl.float32), axis=1) * rden)
            dnum = (gf * rden[:, None]).to(q.dtype)
            xf = q.to(tl.float32)
            phi, wc, ws = _elu_cos_tile(xf, rows, inside, q_base, N, 1, BLOCK_N, D, False)  # TRIG unread (elu)
            dphi = _dot(dnum, tl.trans(s), IEEE) + dden[:, None] * z[None, :]
            dx = _elu_cos_input_grad(dphi, xf, phi, wc, ws, 1, BLOCK_N, D)
            tl.store(DQ + bh * N * D + rows[:, None] * D + cols[None, :], dx.to(DQ.dtype.element_ty),
                     mask=inside[:, None])
            acc += _dot(tl.trans(phi.to(q.dtype)), dnum, IEEE)
            zacc += tl.sum(phi * dden[:, None], axis=0)
        part = bh * num_chunks + chunk
        tl.store(DS_part + part * D * D + cols[:, None] * D + cols[None, :], acc)
        tl.store(DZ_part + part * D + cols, zacc)

    @_TunedLoop
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len"])
    def _elu_cos_state_bwd_kernel(
        K, V, MASK, DS, DZ, DK, DV,
        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
        H, N, chunk_len,
        TRIG,
        FEAT: tl.constexpr, HAS_MASK: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_N: tl.constexpr, IEEE: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        # Key side for one chunk of keys (bf16/fp16; fp32 takes the per-tile _state_bwd_kernel):
        # S = Σ_j φ_j v_jᵀ / count, z = Σ_j φ_j / count over real keys j. With dS' = dS/count (DS, in k's
        # dtype) and dz' = dz/count (DZ), prepared by the caller: dv_j = φ_j·dS', dφ_j = dS'·v_j + dz'
        # (zero for padding keys).
        chunk = tl.program_id(0)
        bh = tl.program_id(1)
        k_base = _head_base(K, bh, H, stride_kb, stride_kh)
        v_base = _head_base(V, bh, H, stride_vb, stride_vh)
        mask_base = _head_base(MASK, bh, H, stride_mb, 0)
        cols = tl.arange(0, D)
        t = _state_rows(FEAT, D)
        ds_in = tl.load(DS + bh * M * D + t[:, None] * D + cols[None, :])  # (M, D)
        dz = tl.load(DZ + bh * M + t)
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        if PREFETCH:
            k_next, v_next, ok_next = _kv_tile_loads(k_base, v_base, mask_base, start, stop, stride_kn, stride_vn,
                                                     cols, HAS_MASK, BLOCK_N)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            inside = rows < stop
            if PREFETCH:
                k, v, ok = k_next, v_next, ok_next
                k_next, v_next, ok_next = _kv_tile_loads(k_base, v_base, mask_base, row0 + BLOCK_N, stop, stride_kn,
                                                         stride_vn, cols, HAS_MASK, BLOCK_N)
            else:
                k, v, ok = _kv_tile_loads(k_base, v_base, mask_base, row0, stop, stride_kn, stride_vn, cols,
                                          HAS_MASK, BLOCK_N)
            dx, dv = _elu_cos_key_grads(k.to(tl.float32), v, ok, rows, ds_in, dz, TRIG, N, FEAT, BLOCK_N, D, IEEE)
            out = bh * N * D + rows[:, None] * D + cols[None, :]
            tl.store(DK + out, dx.to(DK.dtype.element_ty), mask=inside[:, None])
            tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=inside[:, None])


# --------------------------------------------------------------------------------------------------
# Launch helpers and autograd functions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Constants of one launch: feature kind, sizes, scales, the pre-scaled projection."""

    feat: int
    m: int
    block_m: int  # feature block of the backward kernels that loop over features (per token tile)
    block_m_fwd: int  # the same for the read-out forward
    block_m_outer: int  # feature block of the kernels with one program per block (sequence reductions)
    w: torch.Tensor | None  # (M, D) in the input dtype (favor), else None
    half_norm_scale: float  # 0.5·d^{-1/2} (natural units)
    angle_scale: float
    eps: float
    c: float
    ieee: bool


# (id of the projection buffer, hyperbolic, dtype, device) -> (that buffer, its version, kernel rows).
# The entry holds the buffer itself, so its id cannot be reused by another tensor while cached.
_W_CACHE: dict[tuple, tuple[torch.Tensor, int, torch.Tensor]] = {}


def _favor_rows(spec: FeatureSpec, x: torch.Tensor) -> torch.Tensor:
    """The projection as the kernels use it, cached until the buffer changes (a redraw writes it in
    place, which bumps its version): ``[W; −W]`` for the hyperbolic variant, times d^{-1/4}
    (x' = d^{-1/4}x) and log2 e (the kernels use exp2)."""
    proj = spec.projection
    assert proj is not None
    key = (id(proj), spec.hyperbolic, x.dtype, x.device)
    hit = _W_CACHE.get(key)
    if hit is not None and hit[0] is proj and hit[1] == proj._version:
        return hit[2]
    w = proj.to(device=x.device, dtype=torch.float32)
    if spec.hyperbolic:
        w = torch.cat([w, -w], dim=0)
    w = (w * (x.shape[-1] ** -0.25 * LOG2E)).to(x.dtype).contiguous()
    if len(_W_CACHE) > 64:  # modules come and go (tests, redraws): keep the cache small
        _W_CACHE.clear()
    _W_CACHE[key] = (proj, proj._version, w)
    return w


# (kind, horizon, head_dim, dtype) -> the elu/cos plan: built once, as each call's host time before its
# first launch is GPU idle time in an eager step (FAVOR+'s plan holds the projection and is rebuilt).
_PLAN_CACHE: dict[tuple, _Plan] = {}


def _plan(spec: FeatureSpec, x: torch.Tensor) -> _Plan:
    if spec.kind == "favor":
        return _build_plan(spec, x)
    key = (spec.kind, spec.horizon, x.shape[-1], x.dtype)
    plan = _PLAN_CACHE.get(key)
    if plan is None:
        plan = _PLAN_CACHE[key] = _build_plan(spec, x)
    return plan


def _build_plan(spec: FeatureSpec, x: torch.Tensor) -> _Plan:
    d = x.shape[-1]
    m = spec.num_features(d)
    ieee = x.dtype == torch.float32
    if spec.kind == "favor":
        # Feature blocks measured on the H100 at 1M tokens, 256 features (the tile length, warps and
        # stages are tuned per call): 32 in the backward's per-tile loops (the dq kernel 0.9 ms faster
        # than with 64), 64 in the read-out forward (0.2 ms faster than 32), 128 in the reductions.
        block_m, block_m_fwd, outer = (next(b for b in choices if m % b == 0) for choices in (
            (32, 16), (64, 32, 16), (128, 64, 32, 16)))
        return _Plan(0, m, block_m, block_m_fwd, outer, _favor_rows(spec, x), 0.5 / math.sqrt(d), 0.0,
                     float(spec.eps), 1.0 / math.sqrt(m), ieee)
    angle = math.pi / (2 * spec.horizon) if spec.kind == "cos" else 0.0
    # elu/cos: the per-tile kernels take every feature in one block (their BLOCK_M is unused; fp32
    # cosFormer loops over its two D-wide halves); the reductions take all M features in one program.
    return _Plan(FEATURE_KINDS[spec.kind], m, d, d, m, None, 0.0, angle, 0.0, 1.0, ieee)


@functools.lru_cache(maxsize=4)  # a model sees few lengths (training windows, evaluation); 8 MiB each at 1M
def _cos_sin(n: int, offset: int, angle_scale: float, device: torch.device) -> torch.Tensor:
    """(2, n) fp32 table of cos a_i and sin a_i, a_i = angle_scale·(offset + i), as the PyTorch
    reference computes them (fp32 positions, exact up to 2**24); built once per (length, offset)."""
    angle = torch.arange(offset, offset + n, device=device, dtype=torch.float32) * angle_scale
    return torch.stack([torch.cos(angle), torch.sin(angle)]).contiguous()


def _trig_table(plan: _Plan, n: int, offset: int, x: torch.Tensor) -> torch.Tensor:
    """The kernels' TRIG argument: the cos/sin table for cosFormer, any tensor (unread) otherwise."""
    return _cos_sin(n, offset, plan.angle_scale, x.device) if plan.feat == 2 else x


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_chunks(n: int, programs_per_chunk: int, device: torch.device, chunk_tokens: int | None) -> tuple[int, int]:
    """Chunk length (a multiple of every tile size) and count for the sequence-reduction kernels: enough
    programs to fill the GPU several times over, never fewer than one tile per chunk."""
    if chunk_tokens is None:
        chunk_tokens = DEFAULT_CHUNK_TOKENS
    index = (device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else -1
    return _chunking(n, programs_per_chunk, index, chunk_tokens)


@functools.lru_cache(maxsize=256)
def _chunking(n: int, programs_per_chunk: int, index: int, chunk_tokens: int | None) -> tuple[int, int]:
    if chunk_tokens is None:
        sms = _sm_count(index) if index >= 0 else 1
        chunks = max(1, min(math.ceil(4 * sms / programs_per_chunk), math.ceil(n / CHUNK_ALIGN)))
        chunk_tokens = math.ceil(n / chunks)
    chunk_len = max(CHUNK_ALIGN, math.ceil(chunk_tokens / CHUNK_ALIGN) * CHUNK_ALIGN)
    return chunk_len, math.ceil(n / chunk_len)


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # Views such as the encoder's q/k/v split keep a unit last stride: no copy needed.
    return x if x.stride(-1) == 1 else x.contiguous()


def _per_batch(count: torch.Tensor | float, batch: int, device: torch.device) -> tuple[torch.Tensor | None, float]:
    """``count`` as the kernels take it: (per-batch fp32 tensor, None) or (None, scalar)."""
    if isinstance(count, torch.Tensor):
        return count.reshape(batch).to(device=device, dtype=torch.float32).contiguous(), 1.0
    return None, float(count)


def _combine(parts: tuple, bh: int, heads: int, m: int, d: int, device: torch.device, *, kmax=None,
             count=None, count_s: float = 1.0, nreal=None, nreal_s: float = 1.0, eps: float = 0.0,
             c: float = 1.0, vs_part=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the chunks' partial states (``parts`` = (S_part, Z_part, M_part | None)) in one launch; with
    ``vs_part`` (blocks' Σv over real keys, (bh, blocks, d) fp32) it adds the FAVOR+ eps part; see
    ``_combine_kernel``."""
    s_part, z_part, m_part = parts
    chunks = s_part.shape[1]
    s = torch.empty(bh, m, d, device=device, dtype=torch.float32)
    z = torch.empty(bh, m, device=device, dtype=torch.float32)
    # 8 features per program (m is a multiple of 16 for FAVOR+, a head size for elu/cos): enough
    # programs to spread the few MiB of partials over the SMs; BLOCK_C chunks per step keep 8192
    # fp32 (64 registers a thread) in flight.
    block = 8 if m % 8 == 0 else m
    block_c = max(1, min(triton.next_power_of_2(chunks), 8192 // (block * d)))
    _combine_kernel[(m // block, bh)](
        s_part, z_part, m_part if m_part is not None else s_part, vs_part if vs_part is not None else s_part,
        kmax if kmax is not None else s_part, count if count is not None else s_part,
        nreal if nreal is not None else s_part, s, z,
        heads, chunks, vs_part.shape[1] if vs_part is not None else 0, count_s, nreal_s, eps, c,
        RESCALE=kmax is not None, FAVOR_EPS=vs_part is not None, PER_BATCH=count is not None, D=d, M=m, BLOCK_M=block,
        BLOCK_C=block_c,
    )
    return s, z


class _StateFn(torch.autograd.Function):
    """k, v -> (S, z, key_max): count-normalised states of real keys; see :func:`fused_state`."""

    @staticmethod
    def forward(ctx, k, v, padding_mask, spec, chunk_tokens, offset, count):  # noqa: ANN001, ANN205
        plan = _plan(spec, k)
        batch, heads, n, d = k.shape
        bh = batch * heads
        dev = k.device
        mask = padding_mask.to(torch.int8).contiguous() if padding_mask is not None else None
        favor = plan.feat == 0
        nfb = plan.m // plan.block_m_outer if favor else 1
        chunk_len, chunks = _num_chunks(n, bh * nfb, dev, chunk_tokens)
        s_part = torch.empty(bh, chunks, plan.m, d, device=dev, dtype=torch.float32)
        z_part = torch.empty(bh, chunks, plan.m, device=dev, dtype=torch.float32)
        m_part = torch.empty(bh, chunks, plan.m, device=dev, dtype=torch.float32) if favor else None
        mask_arg, mask_stride = (mask, mask.stride(0)) if mask is not None else (k, 0)
        if favor:
            _favor_state_fwd_kernel[(nfb, chunks, bh)](
                k, v, mask_arg, plan.w, s_part, z_part, m_part,
                *_strides(k), *_strides(v), mask_stride, heads, n, chunk_len, chunks, plan.half_norm_scale * LOG2E,
                HAS_MASK=mask is not None, D=d, M=plan.m, BLOCK_M=plan.block_m_outer, IEEE=plan.ieee,
            )
            vs_part = torch.empty(bh, triton.cdiv(n, VALUE_SUM_ROWS), d, device=dev, dtype=torch.float32)
            _value_sum_kernel[(vs_part.shape[1], bh)](
                v, mask_arg, vs_part, *_strides(v), mask_stride, heads, n,
                HAS_MASK=mask is not None, D=d, ROWS=VALUE_SUM_ROWS, BLOCK_N=VALUE_SUM_BLOCK, num_warps=8,
            )
        else:
            _elu_cos_state_fwd_kernel[(chunks, bh)](
                k, v, mask_arg, s_part, z_part, s_part, s_part,
                *_strides(k), *_strides(v), mask_stride, heads, n, chunk_len, chunks, _trig_table(plan, n, offset, k),
                FEAT=plan.feat, HAS_MASK=mask is not None, ROW_W=False, D=d, M=plan.m, IEEE=plan.ieee,
            )
        count_t, count_s = _per_batch(count, batch, dev)
        if favor:
            # (bh,) in log2 units; NEG_BIG where this shard has no real key, so a MAX over shards ignores it
            key_max = m_part.amax(dim=(1, 2))
            if spec.key_max_reduce is not None:  # sequence parallelism: the max over every shard
                key_max = spec.key_max_reduce(key_max.view(batch, heads)).reshape(bh).contiguous()
            # Real keys of this shard (the eps part counts them), per batch row when either side is.
            nreal_t = None if mask is None else mask.sum(dim=1, dtype=torch.float32)
            if nreal_t is not None or count_t is not None:
                if nreal_t is None:
                    nreal_t = torch.full((batch,), float(n), device=dev, dtype=torch.float32)
                if count_t is None:
                    count_t = torch.full((batch,), count_s, device=dev, dtype=torch.float32)
            s, z = _combine((s_part, z_part, m_part), bh, heads, plan.m, d, dev, kmax=key_max,
                            count=count_t, count_s=count_s, nreal=nreal_t, nreal_s=float(n), eps=plan.eps,
                            c=plan.c, vs_part=vs_part)
        else:
            key_max = torch.empty(bh, device=dev, dtype=torch.float32)  # unused: no stabiliser
            s, z = _combine((s_part, z_part, None), bh, heads, plan.m, d, dev, count=count_t, count_s=count_s)
        ctx.save_for_backward(k, v, mask, key_max, count_t)
        ctx.plan, ctx.offset, ctx.count_s, ctx.chunk_tokens = plan, offset, count_s, chunk_tokens
        ctx.mark_non_differentiable(key_max)
        shape = (batch, heads)
        return s.view(*shape, plan.m, d), z.view(*shape, plan.m), key_max.view(shape)

    @staticmethod
    def backward(ctx, ds, dz, _dkm):  # noqa: ANN001, ANN205
        k, v, mask, key_max, count_t = ctx.saved_tensors
        plan = ctx.plan
        batch, heads, n, d = k.shape
        bh = batch * heads

        def flat(g: torch.Tensor | None, *shape: int) -> torch.Tensor:
            if g is None:
                return torch.zeros(bh, *shape, device=k.device, dtype=torch.float32)
            return g.reshape(bh, *shape).to(torch.float32)

        # dS' = c/count·dS (in k's dtype: the kernel's product operand), dz' = c/count·dz and
        # eps·Σ_f dS'_f, prepared once here rather than in each of the kernel's programs. Scaled and
        # rounded in one op (a scalar scale without a mask): each small op is a launch and a few µs.
        scale = plan.c / ctx.count_s if count_t is None else (plan.c / count_t).repeat_interleave(heads)[:, None]
        dz = flat(dz, plan.m) * scale
        ds = flat(ds, plan.m, d)
        ds_scale = scale if count_t is None else scale[:, :, None]
        if plan.feat == 0:
            ds = ds * ds_scale
            ds_in = ds.to(k.dtype)
        else:
            ds_in = torch.mul(ds, ds_scale, out=torch.empty(ds.shape, device=k.device, dtype=k.dtype))
        dk = torch.empty(batch, heads, n, d, device=k.device, dtype=k.dtype)
        dv = torch.empty(batch, heads, n, d, device=v.device, dtype=v.dtype)
        if plan.feat != 0 and not plan.ieee:  # elu/cos in bf16/fp16: programs walk chunks of keys
            chunk_len, chunks = _num_chunks(n, bh, k.device, ctx.chunk_tokens)
            _elu_cos_state_bwd_kernel[(chunks, bh)](
                k, v, mask if mask is not None else k, ds_in, dz, dk, dv,
                *_strides(k), *_strides(v), mask.stride(0) if mask is not None else 0,
                heads, n, chunk_len, _trig_table(plan, n, ctx.offset, k),
                FEAT=plan.feat, HAS_MASK=mask is not None, D=d, M=plan.m, IEEE=plan.ieee,
            )
        else:
            dvs = plan.eps * ds.sum(dim=1) if plan.feat == 0 else dz  # FAVOR+'s eps part; unread otherwise
            _state_bwd_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), bh)](
                k, v, mask if mask is not None else k, plan.w if plan.w is not None else k, key_max,
                ds_in, dz, dvs, dk, dv,
                *_strides(k), *_strides(v), mask.stride(0) if mask is not None else 0,
                heads, n, plan.half_norm_scale * LOG2E, _trig_table(plan, n, ctx.offset, k),
                FEAT=plan.feat, HAS_MASK=mask is not None, D=d, M=plan.m, BLOCK_M=plan.block_m, IEEE=plan.ieee,
            )
        return dk, dv, None, None, None, None, None


class _ReadoutFn(torch.autograd.Function):
    """q, S, z -> ``φ(Q)·S / clamp(φ(Q)·z)``; see :func:`fused_readout`."""

    @staticmethod
    def forward(ctx, q, s, z, spec, chunk_tokens, offset):  # noqa: ANN001, ANN205
        plan = _plan(spec, q)
        batch, heads, n, d = q.shape
        bh = batch * heads
        favor = plan.feat == 0
        s = s.reshape(bh, plan.m, d).to(torch.float32).contiguous()
        z = z.reshape(bh, plan.m).to(torch.float32).contiguous()
        # S is only ever a product operand: rounded to q's dtype once, not in every program.
        s_in = s.to(q.dtype)
        out = torch.empty(batch, heads, n, d, device=q.device, dtype=q.dtype)
        den = torch.empty(bh, n, device=q.device, dtype=torch.float32)
        if favor:  # eps·ΣS and eps·Σz: the eps part of every query feature
            scol, zsum = s.sum(dim=1), z.sum(dim=1)
            m_row = torch.empty(bh, n, device=q.device, dtype=torch.float32)
        else:
            scol = zsum = m_row = s
        if not favor and not plan.ieee:  # elu/cos in bf16/fp16: programs walk chunks of queries
            chunk_len, chunks = _num_chunks(n, bh, q.device, chunk_tokens)
            _elu_cos_readout_fwd_kernel[(chunks, bh)](
                q, s_in, z, out, den, *_strides(q), heads, n, chunk_len, _trig_table(plan, n, offset, q),
                FEAT=plan.feat, D=d, M=plan.m, IEEE=plan.ieee,
            )
        elif favor and not plan.ieee and plan.m <= FAVOR_ONE_BLOCK:
            chunk_len, chunks = _num_chunks(n, bh, q.device, chunk_tokens)
            _favor_readout_fwd_kernel[(chunks, bh)](
                q, plan.w, s_in, z, scol, zsum, out, den, m_row, *_strides(q), heads, n, chunk_len,
                plan.eps, plan.c, D=d, M=plan.m, MP=triton.next_power_of_2(plan.m), IEEE=plan.ieee,
            )
        else:
            _readout_fwd_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), bh)](
                q, plan.w if favor else q, s_in, z, scol, zsum, out, den, m_row,
                *_strides(q), heads, n, _trig_table(plan, n, offset, q), plan.eps, plan.c,
                FEAT=plan.feat, D=d, M=plan.m, BLOCK_M=plan.block_m_fwd, IEEE=plan.ieee,
            )
        # The backward reads the output and the denominator back (4 bytes a row; the output is
        # usually alive anyway, as the input of the next layer's projection) rather than rebuild them.
        ctx.save_for_backward(q, s_in, z, out, den, *([m_row, scol, zsum] if favor else []))
        ctx.plan, ctx.chunk_tokens, ctx.offset = plan, chunk_tokens, offset
        ctx.s_shape, ctx.z_shape = (batch, heads, plan.m, d), (batch, heads, plan.m)
        return out

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        plan = ctx.plan
        # Unpacked once: under activation checkpointing each saved tensor may be unpacked only once.
        q, s, z, out, den, *favor_rows = ctx.saved_tensors
        batch, heads, n, d = q.shape
        bh = batch * heads
        g = g.contiguous()
        dq = torch.empty_like(q, memory_format=torch.contiguous_format)
        favor = plan.feat == 0
        nfb = plan.m // plan.block_m_outer if favor else 1
        chunk_len, chunks = _num_chunks(n, bh * nfb, q.device, ctx.chunk_tokens)
        ds_part = torch.empty(bh, chunks, plan.m, d, device=q.device, dtype=torch.float32)
        dz_part = torch.empty(bh, chunks, plan.m, device=q.device, dtype=torch.float32)
        if plan.feat == 1 and not plan.ieee:  # one pass: dq and the chunks' dS/dz partials
            _elu_readout_bwd_kernel[(chunks, bh)](
                q, s, z, g, out, den, dq, ds_part, dz_part,
                *_strides(q), heads, n, chunk_len, chunks, D=d, IEEE=plan.ieee,
            )
        else:  # a per-tile dq kernel, then the dS/dz reduction over the sequence
            # Per query row: 1/den and d den, written by the dq kernel for the reduction.
            row_v = torch.empty(bh, n, device=q.device, dtype=torch.float32)
            row_z = torch.empty(bh, n, device=q.device, dtype=torch.float32)
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), bh)  # noqa: E731
            if favor:
                m_row, scol, zsum = favor_rows
                _favor_readout_bwd_dq_kernel[grid](
                    q, plan.w, s, z, scol, zsum, g, out, den, m_row, dq, row_v, row_z,
                    *_strides(q), heads, n, plan.half_norm_scale, plan.eps, plan.c,
                    D=d, M=plan.m, BLOCK_M=plan.block_m, IEEE=plan.ieee,
                )
                _favor_readout_bwd_dstate_kernel[(nfb, chunks, bh)](
                    q, plan.w, g, m_row, row_v, row_z, ds_part, dz_part,
                    *_strides(q), heads, n, chunk_len, chunks, plan.eps, plan.c,
                    D=d, M=plan.m, BLOCK_M=plan.block_m_outer, IEEE=plan.ieee,
                )
            else:
                trig = _trig_table(plan, n, ctx.offset, q)
                _elu_cos_readout_bwd_dq_kernel[grid](
                    q, s, z, g, out, den, dq, row_v, row_z,
                    *_strides(q), heads, n, trig,
                    FEAT=plan.feat, D=d, M=plan.m, IEEE=plan.ieee,
                )
                # dS = Σ φ(q_i)ᵀ·dO_i/den_i, dz = Σ φ(q_i)·dden_i: the state forward's reduction, weighted.
                _elu_cos_state_fwd_kernel[(chunks, bh)](
                    q, g, q, ds_part, dz_part, row_v, row_z, *_strides(q), *_strides(g), 0,
                    heads, n, chunk_len, chunks, trig,
                    FEAT=plan.feat, HAS_MASK=False, ROW_W=True, D=d, M=plan.m, IEEE=plan.ieee,
                )
        ds, dz = _combine((ds_part, dz_part, None), bh, heads, plan.m, d, q.device)
        return dq, ds.view(ctx.s_shape), dz.view(ctx.z_shape), None, None, None


def _autocast_off(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off around the kernels' autograd functions (their dtypes are explicit), entered
    only when autocast is on: in an eager step every microsecond before the first launch is GPU idle
    time, and entering the context costs a few (2.6 µs on the CPU machine, more on the GPU host)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def _prepare(x: torch.Tensor) -> torch.Tensor:
    if not HAVE_TRITON:
        raise UserError("the fused linear-attention kernels need the triton package (pip install triton)")
    return _last_dim_contiguous(x)


def fused_state(
    k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor | None,
    count: torch.Tensor | float,
    spec: FeatureSpec,
    chunk_tokens: int | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """State stage: count-normalised ``S`` (batch, heads, features, head_dim) and ``z`` (batch, heads,
    features), fp32, differentiable w.r.t. ``k`` and ``v``.

    ``count``: the number of real tokens (``real_token_count``), of the whole sequence under sequence
    parallelism (the caller then SUM-reduces the results). FAVOR+: the key stabiliser of this shard is
    MAX-reduced through ``spec.key_max_reduce`` when set, and the states are rescaled to it.
    ``chunk_tokens`` fixes the chunk of the sequence reduction (tests); default: fill the device.
    ``offset``: global position of the first token (cosFormer under sequence parallelism).
    """
    k, v = _prepare(k), _prepare(v if v.dtype == k.dtype else v.to(k.dtype))
    with _autocast_off(k):
        s, z, _ = _StateFn.apply(k, v, padding_mask, spec, chunk_tokens, offset, count)
    return s, z


def fused_readout(
    q: torch.Tensor,
    s: torch.Tensor,
    z: torch.Tensor,
    spec: FeatureSpec,
    chunk_tokens: int | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Read-out stage ``φ(Q)·S / clamp(φ(Q)·z)``: ``q`` (batch, heads, seq, head_dim) -> q's shape and
    dtype; differentiable w.r.t. ``q``, ``s`` and ``z``."""
    q = _prepare(q)
    with _autocast_off(q):
        return _ReadoutFn.apply(q, s, z, spec, chunk_tokens, offset)
