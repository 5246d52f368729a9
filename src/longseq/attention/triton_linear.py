"""Fused Triton kernels for non-causal normalised linear attention (forward and backward).

The same two stages as :func:`longseq.attention.linear_core.chunked_linear_attention`, each an
``autograd.Function``, so that a sequence-parallel all-reduce can sit between them:

1. state:    ``S = φ(K)ᵀV / count`` (batch, heads, features, head_dim), ``z = Σφ(K) / count`` (fp32);
2. read-out: ``out = φ(Q)·S / clamp(φ(Q)·z)`` (batch, heads, seq, head_dim) in the input dtype.

Feature maps are computed inside the kernels from ``q``/``k`` tiles and never written to memory:

- ``favor``: FAVOR+ ``c·(exp(w·x' − ‖x'‖²/2 − stabiliser) + eps)``, ``x' = d^{-1/4}x``, ``c = 1/√m``
  (the hyperbolic variant is the same map with the rows ``[W; −W]``);
- ``elu``: ``where(x > 0, x + 1, exp(x))``;
- ``cos``: cosFormer ``[relu(x)·cos a_i, relu(x)·sin a_i]``, ``a_i = π·i/(2M)``.

Work split. The state stage is a reduction over the sequence: one program per (sequence chunk,
batch·head) — and per feature block for FAVOR+ — writes a partial ``S``/``z`` for its chunk, and the
partials are summed afterwards (a few MiB), so that a single 1M-token sequence still fills every SM.
The read-out and the key-side backward are independent per token: one program per (token tile,
batch·head), looping over feature blocks. The read-out backward's ``dS``/``dz`` are again a sequence
reduction; for elu/cos the same kernel also writes ``dq`` (q, dO and the output are read once), for
FAVOR+ ``dq`` has its own per-tile kernel. Tile length, warps and pipeline depth are autotuned per
(length, head_dim, features, feature map); ``LONGSEQ_TRITON_TUNE=0`` fixes one configuration.

Numerics (DESIGN.md): accumulation in fp32 (``tl.dot`` with fp32 accumulators; feature tiles are
rounded to the input dtype only as the operand of a tensor-core product, as flash attention does with
its probabilities), denominators in fp32, the clamp at ``DENOMINATOR_FLOOR`` on the count-normalised
scale exactly as the PyTorch reference. FAVOR+ stabilisers:

- keys: one max per (batch, head) over real tokens and features. Each state program keeps a running
  max over its chunk and rescales its accumulators when the max grows (flash attention's online
  softmax); the partials are then rescaled to the largest max when combined. The stabiliser cancels
  in the ratio, so this is exact. The ``eps`` term is kept apart (``eps·Σv``, ``eps·n``) because it
  must not be rescaled. The max is returned, and :func:`fused_state` rescales to a caller-reduced
  (all-reduced MAX) max before the SUM over sequence shards;
- queries: the per-row max over features, found online across feature blocks in the read-out (again
  a rescaling of running sums; ``eps·ΣS`` and ``eps·Σz`` are added at the end) and saved per row (4
  bytes) so the backward rebuilds identical features.

Backward recomputes every feature tile; what is kept is q, k, v, the output, the small states and two
fp32 numbers per query row (denominator, row max), so the extra memory is O(state + seq), never
O(seq · features).

On CPU the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` is set before ``triton`` is
imported (the tests do this in a subprocess); that is slow and meant for small correctness checks.
"""

from __future__ import annotations

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

if HAVE_TRITON:
    # Module constants used inside kernels must be constexpr for Triton.
    _FLOOR = tl.constexpr(DENOMINATOR_FLOOR)
    _NEG = tl.constexpr(NEG_BIG)

    def _configs() -> list:
        if interpreter_on():
            return [triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=1)]
        if os.environ.get("LONGSEQ_TRITON_TUNE", "1") == "0":  # one fixed configuration (quick tests)
            return [triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2)]
        return [
            triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=st)
            for bn in (64, 128) for w in (4, 8) for st in (2, 3)
        ]

    # Tuned per (length, sizes, feature map); every kernel overwrites its whole output, so the trial
    # runs of the tuner leave nothing behind.
    # Lengths and positions are not specialised on (Triton would otherwise compile a new variant of
    # every candidate whenever their divisibility by 16 changes, i.e. at many sequence lengths).
    _LENGTHS = ["H", "N", "pos0"]

    # Short timing runs per candidate: the tuner runs once per new length, inside the first step.
    _tuned = triton.autotune(
        configs=_configs(), key=["N", "D", "M", "FEAT"],
        do_bench=functools.partial(triton.testing.do_bench, warmup=5, rep=25),
    )

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr):
        # fp32 operands (tests, fp32 training) keep full precision; bf16/fp16 go to the tensor cores.
        if IEEE:
            return tl.dot(a, b, input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _features(
        x,  # (BLOCK_N, D) tile in the input dtype
        rows,  # (BLOCK_N,) token positions
        fb,  # feature block index
        W,  # (M, D) pre-scaled projection (favor), input dtype
        half_norm_scale,  # 0.5·d^{-1/2} (favor)
        angle_scale,  # π/(2M) (cos)
        FEAT: tl.constexpr,
        D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """Pre-activation of feature block ``fb``: FAVOR+ logits (BLOCK_N, BLOCK_M) fp32 without any
        stabiliser; for elu/cos the fp32 features themselves (BLOCK_M == D)."""
        if FEAT == 0:
            cols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
            w = tl.load(W + cols[:, None] * D + tl.arange(0, D)[None, :])  # (BLOCK_M, D)
            xf = x.to(tl.float32)
            half_norm = tl.sum(xf * xf, axis=1) * half_norm_scale  # (BLOCK_N,)
            return _dot(x, tl.trans(w), IEEE) - half_norm[:, None]
        elif FEAT == 1:
            xf = x.to(tl.float32)
            # exp(min(x, 0)): the unselected branch must not overflow (see linear_elu.elu_plus_one)
            return tl.where(xf > 0, xf + 1.0, tl.exp(tl.minimum(xf, 0.0)))
        else:
            xf = x.to(tl.float32)
            angle = rows.to(tl.float32) * angle_scale
            weight = tl.where(fb == 0, tl.cos(angle), tl.sin(angle))
            return tl.maximum(xf, 0.0) * weight[:, None]

    @triton.jit
    def _logits_t(xt, fb, W, half_norm_scale, D: tl.constexpr, BLOCK_M: tl.constexpr, IEEE: tl.constexpr):
        """FAVOR+ logits of feature block ``fb``, transposed: ``xt`` (D, BLOCK_N) -> (BLOCK_M, BLOCK_N)."""
        fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
        w = tl.load(W + fcols[:, None] * D + tl.arange(0, D)[None, :])  # (BLOCK_M, D)
        xf = xt.to(tl.float32)
        half_norm = tl.sum(xf * xf, axis=0) * half_norm_scale  # (BLOCK_N,)
        return _dot(w, xt, IEEE) - half_norm[None, :]

    @triton.jit
    def _feature_grad(
        dphi,  # (BLOCK_N, BLOCK_M) fp32: gradient w.r.t. the un-scaled feature core
        core,  # (BLOCK_N, BLOCK_M) fp32: exp(l − stabiliser) (favor) or the features (elu/cos)
        x,
        rows,
        fb,
        W,
        angle_scale,
        FEAT: tl.constexpr,
        D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """Contribution of feature block ``fb`` to dx, plus (favor) the row sums of dlogits, which the
        caller turns into the ‖x'‖² term once for all blocks."""
        if FEAT == 0:
            dl = dphi * core  # d exp(l − s) / dl = exp(l − s)
            cols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
            w = tl.load(W + cols[:, None] * D + tl.arange(0, D)[None, :])  # (BLOCK_M, D)
            return _dot(dl.to(w.dtype), w, IEEE), tl.sum(dl, axis=1)
        elif FEAT == 1:
            xf = x.to(tl.float32)
            return dphi * tl.where(xf > 0, 1.0, core), tl.zeros_like(tl.sum(dphi, axis=1))
        else:
            xf = x.to(tl.float32)
            angle = rows.to(tl.float32) * angle_scale
            weight = tl.where(fb == 0, tl.cos(angle), tl.sin(angle))
            return dphi * tl.where(xf > 0, weight[:, None], 0.0), tl.zeros_like(tl.sum(dphi, axis=1))

    @_tuned
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len", "num_chunks"])
    def _state_fwd_kernel(
        K, V, MASK, W,
        S_part, Z_part, M_part, VS_part,
        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
        H, N, chunk_len, num_chunks,
        half_norm_scale, angle_scale, pos0,
        FEAT: tl.constexpr, HAS_MASK: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # Features are built transposed, (BLOCK_M, BLOCK_N) = W_f · kᵀ, so that they enter φᵀV as the
        # left operand straight from the accumulator layout (no transpose through shared memory).
        # FAVOR+: one program per feature block (grid axis 0, fastest, so the programs reading the
        # same chunk of k, v run together and share it through L2). elu/cos: one program builds every
        # block (cos: the cos and sin halves) from one load.
        fb = tl.program_id(0)
        chunk = tl.program_id(1)
        bh = tl.program_id(2)
        b = bh // H
        h = bh % H
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        cols = tl.arange(0, D)
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        zacc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, D), dtype=tl.float32)  # cos: the sin half
        zacc2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        vacc = tl.zeros((D,), dtype=tl.float32)
        m_run = tl.full((), _NEG, tl.float32)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            ok = rows < stop
            if HAS_MASK:
                ok = ok & (tl.load(MASK + b * stride_mb + rows, mask=ok, other=0) != 0)
            kt = tl.load(k_base + rows[None, :] * stride_kn + cols[:, None], mask=ok[None, :], other=0.0)
            v = tl.load(v_base + rows[:, None] * stride_vn + cols[None, :], mask=ok[:, None], other=0.0)
            if FEAT == 0:
                lt = _logits_t(kt, fb, W, half_norm_scale, D, BLOCK_M, IEEE)
                lt = tl.where(ok[None, :], lt, _NEG)
                m_new = tl.maximum(m_run, tl.max(tl.max(lt, axis=1), axis=0))
                alpha = tl.exp(m_run - m_new)
                pt = tl.where(ok[None, :], tl.exp(lt - m_new), 0.0)
                acc = acc * alpha + _dot(pt.to(v.dtype), v, IEEE)
                zacc = zacc * alpha + tl.sum(pt, axis=1)
                m_run = m_new
            elif FEAT == 1:
                xf = kt.to(tl.float32)
                pt = tl.where(ok[None, :], tl.where(xf > 0, xf + 1.0, tl.exp(tl.minimum(xf, 0.0))), 0.0)
                acc += _dot(pt.to(v.dtype), v, IEEE)
                zacc += tl.sum(pt, axis=1)
            else:
                angle = (rows + pos0).to(tl.float32) * angle_scale
                r = tl.where(ok[None, :], tl.maximum(kt.to(tl.float32), 0.0), 0.0)
                pc = r * tl.cos(angle)[None, :]
                ps = r * tl.sin(angle)[None, :]
                acc += _dot(pc.to(v.dtype), v, IEEE)
                zacc += tl.sum(pc, axis=1)
                acc2 += _dot(ps.to(v.dtype), v, IEEE)
                zacc2 += tl.sum(ps, axis=1)
            vacc += tl.sum(v.to(tl.float32), axis=0)
        part = bh * num_chunks + chunk
        fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(S_part + part * M * D + fcols[:, None] * D + cols[None, :], acc)
        tl.store(Z_part + part * M + fcols, zacc)
        if FEAT == 0:
            tl.store(M_part + part * (M // BLOCK_M) + fb, m_run)
        if FEAT == 2:
            tl.store(S_part + part * M * D + (BLOCK_M + fcols[:, None]) * D + cols[None, :], acc2)
            tl.store(Z_part + part * M + BLOCK_M + fcols, zacc2)
        if fb == 0:
            tl.store(VS_part + part * D + cols, vacc)

    @_tuned
    @triton.jit(do_not_specialize=_LENGTHS)
    def _state_bwd_kernel(
        K, V, MASK, W, KMAX, DS, DZ, DVS, DK, DV,
        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
        H, N,
        half_norm_scale, angle_scale, pos0,
        FEAT: tl.constexpr, HAS_MASK: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # S_core = Σ_j φ_j v_jᵀ, z_core = Σ_j φ_j, vsum = Σ_j v_j over real keys j of one (batch, head):
        # dv_j = φ_j·dS + dvsum, dφ_j = dS·v_j + dz.
        tile = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        cols = tl.arange(0, D)
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = rows < N
        ok = inside
        if HAS_MASK:
            ok = ok & (tl.load(MASK + b * stride_mb + rows, mask=inside, other=0) != 0)
        k = tl.load(K + b * stride_kb + h * stride_kh + rows[:, None] * stride_kn + cols[None, :],
                    mask=ok[:, None], other=0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vn + cols[None, :],
                    mask=ok[:, None], other=0.0)
        dvs = tl.load(DVS + bh * D + cols)
        dv = tl.where(ok[:, None], dvs[None, :], 0.0)
        dx = tl.zeros((BLOCK_N, D), dtype=tl.float32)
        dl_rows = tl.zeros((BLOCK_N,), dtype=tl.float32)
        kmax = tl.load(KMAX + bh)
        for fb in range(M // BLOCK_M):
            fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
            pre = _features(k, rows + pos0, fb, W, half_norm_scale, angle_scale, FEAT, D, BLOCK_M, IEEE)
            if FEAT == 0:
                # Padded rows are zeroed keys whose logits may exceed the max: clamp before exp.
                core = tl.exp(tl.minimum(pre - kmax, 0.0))
            else:
                core = pre
            core = tl.where(ok[:, None], core, 0.0)
            ds = tl.load(DS + bh * M * D + fcols[:, None] * D + cols[None, :])  # (BLOCK_M, D) fp32
            dz = tl.load(DZ + bh * M + fcols)
            dv += _dot(core.to(v.dtype), ds.to(v.dtype), IEEE)
            dphi = _dot(v, tl.trans(ds.to(v.dtype)), IEEE) + dz[None, :]
            dphi = tl.where(ok[:, None], dphi, 0.0)
            g, r = _feature_grad(dphi, core, k, rows + pos0, fb, W, angle_scale, FEAT, D, BLOCK_M, IEEE)
            dx += g
            dl_rows += r
        if FEAT == 0:
            dx -= dl_rows[:, None] * (2.0 * half_norm_scale) * k.to(tl.float32)
        out = bh * N * D + rows[:, None] * D + cols[None, :]
        tl.store(DK + out, dx.to(DK.dtype.element_ty), mask=inside[:, None])
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=inside[:, None])

    @triton.jit
    def _query_core(q, rows, fb, W, m_row, half_norm_scale, angle_scale,
                    FEAT: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, IEEE: tl.constexpr):
        pre = _features(q, rows, fb, W, half_norm_scale, angle_scale, FEAT, D, BLOCK_M, IEEE)
        if FEAT == 0:
            return tl.exp(pre - m_row[:, None])
        return pre

    @_tuned
    @triton.jit(do_not_specialize=_LENGTHS)
    def _readout_fwd_kernel(
        Q, W, S, Z, SCOL, ZSUM, OUT, DEN, MROW,
        stride_qb, stride_qh, stride_qn,
        H, N,
        half_norm_scale, angle_scale, pos0, eps, c,
        FEAT: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        tile = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        cols = tl.arange(0, D)
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = rows < N
        q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + cols[None, :],
                    mask=inside[:, None], other=0.0)
        acc = tl.zeros((BLOCK_N, D), dtype=tl.float32)
        den = tl.zeros((BLOCK_N,), dtype=tl.float32)
        m_row = tl.full((BLOCK_N,), _NEG, dtype=tl.float32)
        for fb in range(M // BLOCK_M):
            fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
            pre = _features(q, rows + pos0, fb, W, half_norm_scale, angle_scale, FEAT, D, BLOCK_M, IEEE)
            s = tl.load(S + bh * M * D + fcols[:, None] * D + cols[None, :])  # (BLOCK_M, D) fp32
            z = tl.load(Z + bh * M + fcols)
            if FEAT == 0:
                m_new = tl.maximum(m_row, tl.max(pre, axis=1))
                alpha = tl.exp(m_row - m_new)
                p = tl.exp(pre - m_new[:, None])
                acc = acc * alpha[:, None]
                den = den * alpha
                m_row = m_new
            else:
                p = pre
            acc += _dot(p.to(q.dtype), s.to(q.dtype), IEEE)
            den += tl.sum(p * z[None, :], axis=1)
        if FEAT == 0:
            acc = c * (acc + eps * tl.load(SCOL + bh * D + cols)[None, :])
            den = c * (den + eps * tl.load(ZSUM + bh))
        out = acc / tl.maximum(den, _FLOOR)[:, None]
        tl.store(OUT + bh * N * D + rows[:, None] * D + cols[None, :], out.to(OUT.dtype.element_ty),
                 mask=inside[:, None])
        tl.store(DEN + bh * N + rows, den, mask=inside)
        tl.store(MROW + bh * N + rows, m_row, mask=inside)

    @triton.jit
    def _readout_grads(G, OUT, DEN, bh, rows, inside, cols, N, D: tl.constexpr):
        """Per query row: d num = g/den, d den = −g·out/den (0 where the clamp was active)."""
        g = tl.load(G + bh * N * D + rows[:, None] * D + cols[None, :], mask=inside[:, None], other=0.0)
        o = tl.load(OUT + bh * N * D + rows[:, None] * D + cols[None, :], mask=inside[:, None], other=0.0)
        den = tl.load(DEN + bh * N + rows, mask=inside, other=1.0)
        den_c = tl.maximum(den, _FLOOR)
        g = g.to(tl.float32)
        dnum = g / den_c[:, None]
        dden = tl.where(den < _FLOOR, 0.0, -tl.sum(g * o.to(tl.float32), axis=1) / den_c)
        return dnum, dden

    @_tuned
    @triton.jit(do_not_specialize=_LENGTHS)
    def _readout_bwd_dq_kernel(
        Q, W, S, Z, G, OUT, DEN, MROW, DQ,
        stride_qb, stride_qh, stride_qn,
        H, N,
        half_norm_scale, angle_scale, pos0, c,
        FEAT: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # num_i = Σ_f φ_if S_f, den_i = Σ_f φ_if z_f with φ = c·(core + eps):
        # d core_if = c·(S_f·dnum_i + z_f·dden_i).
        tile = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        cols = tl.arange(0, D)
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = rows < N
        q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + cols[None, :],
                    mask=inside[:, None], other=0.0)
        dnum, dden = _readout_grads(G, OUT, DEN, bh, rows, inside, cols, N, D)
        m_row = tl.load(MROW + bh * N + rows, mask=inside, other=0.0)
        dx = tl.zeros((BLOCK_N, D), dtype=tl.float32)
        dl_rows = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for fb in range(M // BLOCK_M):
            fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
            core = _query_core(q, rows + pos0, fb, W, m_row, half_norm_scale, angle_scale, FEAT, D, BLOCK_M, IEEE)
            s = tl.load(S + bh * M * D + fcols[:, None] * D + cols[None, :])
            z = tl.load(Z + bh * M + fcols)
            dphi = c * (_dot(dnum.to(q.dtype), tl.trans(s.to(q.dtype)), IEEE) + dden[:, None] * z[None, :])
            g, r = _feature_grad(dphi, core, q, rows + pos0, fb, W, angle_scale, FEAT, D, BLOCK_M, IEEE)
            dx += g
            dl_rows += r
        if FEAT == 0:
            dx -= dl_rows[:, None] * (2.0 * half_norm_scale) * q.to(tl.float32)
        tl.store(DQ + bh * N * D + rows[:, None] * D + cols[None, :], dx.to(DQ.dtype.element_ty),
                 mask=inside[:, None])

    @_tuned
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len", "num_chunks"])
    def _readout_bwd_dstate_kernel(
        Q, W, S, Z, G, OUT, DEN, MROW, DQ, DS_part, DZ_part,
        stride_qb, stride_qh, stride_qn,
        H, N, chunk_len, num_chunks,
        half_norm_scale, angle_scale, pos0, eps, c,
        FEAT: tl.constexpr, D: tl.constexpr, M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # dS_f = Σ_i φ_if dnum_i, dz_f = Σ_i φ_if dden_i: partial sums over one chunk of queries, with
        # the features built transposed (BLOCK_M, BLOCK_N) so they are the left operand as computed.
        # FAVOR+: one program per feature block; dq comes from _readout_bwd_dq_kernel. elu/cos: one
        # program holds every block (at most two) and also writes dq, so q, dO and out are read once.
        fb = tl.program_id(0)
        chunk = tl.program_id(1)
        bh = tl.program_id(2)
        b = bh // H
        h = bh % H
        cols = tl.arange(0, D)
        q_base = Q + b * stride_qb + h * stride_qh
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        zacc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, D), dtype=tl.float32)  # cos: the sin half
        zacc2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if FEAT != 0:
            # Sᵀ of each block (D, BLOCK_M) in the input dtype, and z: loaded once for the chunk.
            fcols = tl.arange(0, BLOCK_M)
            st = tl.load(S + bh * M * D + fcols[None, :] * D + cols[:, None]).to(Q.dtype.element_ty)
            zf = tl.load(Z + bh * M + fcols)
            if FEAT == 2:
                st2 = tl.load(S + bh * M * D + (BLOCK_M + fcols[None, :]) * D + cols[:, None]).to(Q.dtype.element_ty)
                zf2 = tl.load(Z + bh * M + BLOCK_M + fcols)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            inside = rows < stop
            qt = tl.load(q_base + rows[None, :] * stride_qn + cols[:, None], mask=inside[None, :], other=0.0)
            dnum, dden = _readout_grads(G, OUT, DEN, bh, rows, inside, cols, N, D)
            dnum_in = dnum.to(Q.dtype.element_ty)
            if FEAT == 0:
                m_row = tl.load(MROW + bh * N + rows, mask=inside, other=0.0)
                lt = _logits_t(qt, fb, W, half_norm_scale, D, BLOCK_M, IEEE)
                pt = tl.where(inside[None, :], c * (tl.exp(lt - m_row[None, :]) + eps), 0.0)
                acc += _dot(pt.to(Q.dtype.element_ty), dnum_in, IEEE)
                zacc += tl.sum(pt * dden[None, :], axis=1)
            else:
                q = tl.load(q_base + rows[:, None] * stride_qn + cols[None, :], mask=inside[:, None], other=0.0)
                xf = q.to(tl.float32)
                xft = qt.to(tl.float32)
                dphi = _dot(dnum_in, st, IEEE) + dden[:, None] * zf[None, :]  # (BLOCK_N, D)
                if FEAT == 1:
                    pt = tl.where(inside[None, :], tl.where(xft > 0, xft + 1.0, tl.exp(tl.minimum(xft, 0.0))), 0.0)
                    acc += _dot(pt.to(Q.dtype.element_ty), dnum_in, IEEE)
                    zacc += tl.sum(pt * dden[None, :], axis=1)
                    dx = dphi * tl.where(xf > 0, 1.0, tl.exp(tl.minimum(xf, 0.0)))
                else:
                    angle = (rows + pos0).to(tl.float32) * angle_scale
                    r = tl.where(inside[None, :], tl.maximum(xft, 0.0), 0.0)
                    pc = r * tl.cos(angle)[None, :]
                    ps = r * tl.sin(angle)[None, :]
                    acc += _dot(pc.to(Q.dtype.element_ty), dnum_in, IEEE)
                    zacc += tl.sum(pc * dden[None, :], axis=1)
                    acc2 += _dot(ps.to(Q.dtype.element_ty), dnum_in, IEEE)
                    zacc2 += tl.sum(ps * dden[None, :], axis=1)
                    dphi2 = _dot(dnum_in, st2, IEEE) + dden[:, None] * zf2[None, :]
                    on = xf > 0
                    dx = tl.where(on, dphi * tl.cos(angle)[:, None] + dphi2 * tl.sin(angle)[:, None], 0.0)
                tl.store(DQ + bh * N * D + rows[:, None] * D + cols[None, :], dx.to(DQ.dtype.element_ty),
                         mask=inside[:, None])
        part = bh * num_chunks + chunk
        fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(DS_part + part * M * D + fcols[:, None] * D + cols[None, :], acc)
        tl.store(DZ_part + part * M + fcols, zacc)
        if FEAT == 2:
            tl.store(DS_part + part * M * D + (BLOCK_M + fcols[:, None]) * D + cols[None, :], acc2)
            tl.store(DZ_part + part * M + BLOCK_M + fcols, zacc2)


# --------------------------------------------------------------------------------------------------
# Launch helpers and autograd functions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Constants of one launch: feature kind, sizes, scales, the pre-scaled projection."""

    feat: int
    m: int
    block_m: int
    w: torch.Tensor  # (M, D) in the input dtype (favor) or a 1-element dummy
    half_norm_scale: float
    angle_scale: float
    eps: float
    c: float
    ieee: bool


def _plan(spec: FeatureSpec, x: torch.Tensor) -> _Plan:
    d = x.shape[-1]
    m = spec.num_features(d)
    ieee = x.dtype == torch.float32
    if spec.kind == "favor":
        assert spec.projection is not None
        w = spec.projection.to(device=x.device, dtype=torch.float32)
        if spec.hyperbolic:
            w = torch.cat([w, -w], dim=0)
        # x' = d^{-1/4}·x folded into the rows: l = x·(d^{-1/4} w) − ‖x‖²/(2√d).
        w = (w * d**-0.25).to(x.dtype).contiguous()
        block_m = next(b for b in (64, 32, 16) if m % b == 0)
        return _Plan(0, m, block_m, w, 0.5 / math.sqrt(d), 0.0, float(spec.eps), 1.0 / math.sqrt(m), ieee)
    dummy = torch.zeros(1, device=x.device, dtype=x.dtype)
    angle = math.pi / (2 * spec.horizon) if spec.kind == "cos" else 0.0
    return _Plan(FEATURE_KINDS[spec.kind], m, d, dummy, 0.0, angle, 0.0, 1.0, ieee)


def _num_chunks(n: int, programs_per_chunk: int, device: torch.device, chunk_tokens: int | None) -> tuple[int, int]:
    """Chunk length (a multiple of every tile size) and count for the sequence-reduction kernels: enough
    programs to fill the GPU several times over, never fewer than one tile per chunk."""
    if chunk_tokens is None:
        chunk_tokens = DEFAULT_CHUNK_TOKENS
    if chunk_tokens is None:
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        chunks = max(1, min(math.ceil(target / programs_per_chunk), math.ceil(n / CHUNK_ALIGN)))
        chunk_tokens = math.ceil(n / chunks)
    chunk_len = max(CHUNK_ALIGN, math.ceil(chunk_tokens / CHUNK_ALIGN) * CHUNK_ALIGN)
    return chunk_len, math.ceil(n / chunk_len)


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # Views such as the encoder's q/k/v split keep a unit last stride: no copy needed.
    return x if x.stride(-1) == 1 else x.contiguous()


class _StateFn(torch.autograd.Function):
    """k, v -> (S_core, z_core, vsum, key_max) of real keys; see :func:`fused_state`."""

    @staticmethod
    def forward(ctx, k, v, padding_mask, spec, chunk_tokens, offset):  # noqa: ANN001, ANN205
        plan = _plan(spec, k)
        batch, heads, n, d = k.shape
        bh = batch * heads
        mask = padding_mask.to(torch.int8).contiguous() if padding_mask is not None else None
        mask_arg = mask if mask is not None else k
        nfb = plan.m // plan.block_m
        chunk_len, chunks = _num_chunks(n, bh * (nfb if plan.feat == 0 else 1), k.device, chunk_tokens)
        s_part = torch.empty(bh, chunks, plan.m, d, device=k.device, dtype=torch.float32)
        z_part = torch.empty(bh, chunks, plan.m, device=k.device, dtype=torch.float32)
        m_part = torch.empty(bh, chunks, nfb, device=k.device, dtype=torch.float32)
        vs_part = torch.empty(bh, chunks, d, device=k.device, dtype=torch.float32)
        _state_fwd_kernel[(nfb if plan.feat == 0 else 1, chunks, bh)](
            k, v, mask_arg, plan.w, s_part, z_part, m_part, vs_part,
            *_strides(k), *_strides(v), mask.stride(0) if mask is not None else 0,
            heads, n, chunk_len, chunks, plan.half_norm_scale, plan.angle_scale, offset,
            FEAT=plan.feat, HAS_MASK=mask is not None, D=d, M=plan.m, BLOCK_M=plan.block_m,
            IEEE=plan.ieee,
        )
        if plan.feat == 0:
            # (bh,); NEG_BIG where this shard has no real key, so that a MAX over shards ignores it
            key_max = m_part.amax(dim=(1, 2))
            scale = torch.exp(m_part - key_max[:, None, None]).repeat_interleave(plan.block_m, dim=2)
            s = torch.einsum("bcmd,bcm->bmd", s_part, scale)
            z = (z_part * scale).sum(dim=1)
        else:
            key_max = torch.zeros(bh, device=k.device, dtype=torch.float32)
            s, z = s_part.sum(dim=1), z_part.sum(dim=1)
        vsum = vs_part.sum(dim=1)
        ctx.save_for_backward(k, v, mask, key_max)
        ctx.plan, ctx.offset = plan, offset
        ctx.mark_non_differentiable(key_max)
        shape = (batch, heads)
        return s.view(*shape, plan.m, d), z.view(*shape, plan.m), vsum.view(*shape, d), key_max.view(shape)

    @staticmethod
    def backward(ctx, ds, dz, dvs, _dkm):  # noqa: ANN001, ANN205
        k, v, mask, key_max = ctx.saved_tensors
        plan = ctx.plan
        batch, heads, n, d = k.shape
        bh = batch * heads

        def flat(g: torch.Tensor | None, *shape: int) -> torch.Tensor:
            if g is None:
                return torch.zeros(bh, *shape, device=k.device, dtype=torch.float32)
            return g.reshape(bh, *shape).to(torch.float32).contiguous()

        dk = torch.empty(batch, heads, n, d, device=k.device, dtype=k.dtype)
        dv = torch.empty(batch, heads, n, d, device=v.device, dtype=v.dtype)
        _state_bwd_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), bh)](
            k, v, mask if mask is not None else k, plan.w, key_max, flat(ds, plan.m, d), flat(dz, plan.m),
            flat(dvs, d), dk, dv,
            *_strides(k), *_strides(v), mask.stride(0) if mask is not None else 0,
            heads, n, plan.half_norm_scale, plan.angle_scale, ctx.offset,
            FEAT=plan.feat, HAS_MASK=mask is not None, D=d, M=plan.m, BLOCK_M=plan.block_m,
            IEEE=plan.ieee,
        )
        return dk, dv, None, None, None, None


class _ReadoutFn(torch.autograd.Function):
    """q, S, z -> ``φ(Q)·S / clamp(φ(Q)·z)``; see :func:`fused_readout`."""

    @staticmethod
    def forward(ctx, q, s, z, spec, chunk_tokens, offset):  # noqa: ANN001, ANN205
        plan = _plan(spec, q)
        batch, heads, n, d = q.shape
        bh = batch * heads
        s = s.reshape(bh, plan.m, d).to(torch.float32).contiguous()
        z = z.reshape(bh, plan.m).to(torch.float32).contiguous()
        scol = s.sum(dim=1) if plan.feat == 0 else s[:, 0]  # eps·ΣS: the eps part of every feature
        zsum = z.sum(dim=1) if plan.feat == 0 else z[:, 0]
        out = torch.empty(batch, heads, n, d, device=q.device, dtype=q.dtype)
        den = torch.empty(bh, n, device=q.device, dtype=torch.float32)
        m_row = torch.empty(bh, n, device=q.device, dtype=torch.float32)
        _readout_fwd_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), bh)](
            q, plan.w, s, z, scol.contiguous(), zsum.contiguous(), out, den, m_row,
            *_strides(q), heads, n, plan.half_norm_scale, plan.angle_scale, offset, plan.eps, plan.c,
            FEAT=plan.feat, D=d, M=plan.m, BLOCK_M=plan.block_m, IEEE=plan.ieee,
        )
        ctx.save_for_backward(q, s, z, out, den, m_row)
        ctx.plan, ctx.chunk_tokens, ctx.offset = plan, chunk_tokens, offset
        ctx.s_shape, ctx.z_shape = (batch, heads, plan.m, d), (batch, heads, plan.m)
        return out

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        q, s, z, out, den, m_row = ctx.saved_tensors
        plan = ctx.plan
        batch, heads, n, d = q.shape
        bh = batch * heads
        g = g.contiguous()
        nfb = plan.m // plan.block_m
        dq = torch.empty_like(q, memory_format=torch.contiguous_format)
        if plan.feat == 0:  # elu/cos: the dstate kernel below writes dq as well
            _readout_bwd_dq_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), bh)](
                q, plan.w, s, z, g, out, den, m_row, dq,
                *_strides(q), heads, n, plan.half_norm_scale, plan.angle_scale, ctx.offset, plan.c,
                FEAT=plan.feat, D=d, M=plan.m, BLOCK_M=plan.block_m, IEEE=plan.ieee,
            )
        programs = nfb if plan.feat == 0 else 1
        chunk_len, chunks = _num_chunks(n, bh * programs, q.device, ctx.chunk_tokens)
        ds_part = torch.empty(bh, chunks, plan.m, d, device=q.device, dtype=torch.float32)
        dz_part = torch.empty(bh, chunks, plan.m, device=q.device, dtype=torch.float32)
        _readout_bwd_dstate_kernel[(programs, chunks, bh)](
            q, plan.w, s, z, g, out, den, m_row, dq, ds_part, dz_part,
            *_strides(q), heads, n, chunk_len, chunks,
            plan.half_norm_scale, plan.angle_scale, ctx.offset, plan.eps, plan.c,
            FEAT=plan.feat, D=d, M=plan.m, BLOCK_M=plan.block_m, IEEE=plan.ieee,
        )
        ds = ds_part.sum(dim=1).view(ctx.s_shape)
        dz = dz_part.sum(dim=1).view(ctx.z_shape)
        return dq, ds, dz, None, None, None


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
    k, v = _prepare(k), _prepare(v.to(k.dtype))
    with torch.autocast(device_type=k.device.type, enabled=False):
        s, z, vsum, key_max = _StateFn.apply(k, v, padding_mask, spec, chunk_tokens, offset)
        if spec.kind != "favor":
            return s / count, z / (count if isinstance(count, float) else count[..., 0])
        if spec.key_max_reduce is not None:
            rescale = torch.exp(key_max - spec.key_max_reduce(key_max))  # (batch, heads), detached
            s, z = s * rescale[..., None, None], z * rescale[..., None]
        m = s.shape[-2]
        c = 1.0 / math.sqrt(m)
        n_real = (
            float(k.shape[-2]) if padding_mask is None
            else padding_mask.sum(dim=-1).to(torch.float32)[:, None, None]
        )
        count_z = count if isinstance(count, float) else count[..., 0]
        # The eps part of every key feature is eps·c per real key: it adds eps·Σv to each row of S.
        s = c * (s + spec.eps * vsum[..., None, :]) / count
        z = c * (z + spec.eps * n_real) / count_z
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
    with torch.autocast(device_type=q.device.type, enabled=False):
        return _ReadoutFn.apply(q, s, z, spec, chunk_tokens, offset)
