"""Prototype (revision 16): FAVOR+ key-side backward in Gluon with two consumer warp groups that take turns
issuing their tensor-core products (FlashAttention-3's ping-pong), so one group's element-wise work runs while the
other's products do. Each group walks its own token tiles (alternate tiles of the program's slice); W and dS' are in
shared memory once per program. k and v tiles are register A operands (no shared-memory staging).

PP_PING=0 gives the same kernel without the turn barriers (two free-running groups), for the A/B.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait, fence_async_shared
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

import os

LN2 = gl.constexpr(0.6931471805599453)
# compile-time settings as module constants (warp_specialize passes its arguments as run-time values)
D = gl.constexpr(64)
M = gl.constexpr(256)
BF = gl.constexpr(int(os.environ.get("PP_BF", "32")))
BLOCK_N = gl.constexpr(64)
PING = gl.constexpr(int(os.environ.get("PP_PING", "1")))
HAS_MASK = gl.constexpr(int(os.environ.get("PP_MASK", "0")))


@gluon.jit
def _rows_ok(MASK, b, stride_mb, rows, N, HAS_MASK: gl.constexpr):
    ok = rows < N
    if HAS_MASK:
        ok = ok & (gl.load(MASK + b * stride_mb + rows, mask=rows < N, other=0) != 0)
    return ok


@gluon.jit
def _consumer(ROLE: gl.constexpr, turn, w_s, ds_s,
              K, V, MASK, KMAX, DZ, DVS, DK, DV,
              stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
              H, N, num_tiles, half_norm_scale):
    NB: gl.constexpr = M // BF
    pid = gl.program_id(0)
    progs = gl.num_programs(0)
    bh = gl.program_id(1)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    mma_f: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BF, 16])
    mma_d: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    op_x: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_f, k_width=2)
    op_f: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_d, k_width=2)
    row_f: gl.constexpr = gl.SliceLayout(1, mma_f)
    col_f: gl.constexpr = gl.SliceLayout(0, mma_f)
    row_d: gl.constexpr = gl.SliceLayout(1, mma_d)
    col_d: gl.constexpr = gl.SliceLayout(0, mma_d)
    b = bh // H
    h = bh % H
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    rr = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld))
    dc = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    kmax = gl.load(KMAX + bh)
    dvs = gl.load(DVS + bh * D + gl.arange(0, D, layout=col_d))
    zf = gl.zeros([BLOCK_N, BF], gl.float32, mma_f)
    # tiles of this program: pid, pid + progs, ...; this group takes every second one
    n_prog = (num_tiles - pid + progs - 1) // progs
    n_mine = (n_prog - ROLE + 1) // 2
    n_other = (n_prog - (1 - ROLE) + 1) // 2
    turns_other = n_other * (NB + 1)
    k_turn = 0
    for i in range(n_mine):
        tile = pid + (2 * i + ROLE) * progs
        rows = tile * BLOCK_N + rr
        ok = _rows_ok(MASK, b, stride_mb, rows, N, HAS_MASK)
        k = gl.load(k_base + rows[:, None] * stride_kn + dc[None, :], mask=ok[:, None], other=0.0)
        v = gl.load(v_base + rows[:, None] * stride_vn + dc[None, :], mask=ok[:, None], other=0.0)
        kf = k.to(gl.float32)
        row_off = gl.convert_layout(gl.sum(kf * kf, axis=1) * half_norm_scale + kmax, row_f)
        k_op = gl.convert_layout(k, op_x)
        v_op = gl.convert_layout(v, op_x)
        dv = gl.zeros([BLOCK_N, D], gl.float32, mma_d)
        dx = gl.zeros([BLOCK_N, D], gl.float32, mma_d)
        dl_rows = gl.zeros([BLOCK_N], gl.float32, row_f)
        # turn: group ROLE's k-th issue waits for the other group's (k-1)-th (ROLE 0) or k-th (ROLE 1) issue
        if PING:
            mbarrier.wait(turn.index(ROLE), k_turn & 1, pred=(k_turn <= turns_other) if ROLE == 0 else True)
        lg_t = warpgroup_mma(k_op, w_s.index(0).permute((1, 0)), zf, use_acc=False, is_async=True)
        ph_t = warpgroup_mma(v_op, ds_s.index(0).permute((1, 0)), zf, use_acc=False, is_async=True)
        if PING:
            mbarrier.arrive(turn.index(1 - ROLE))
        k_turn += 1
        lg, ph = warpgroup_mma_wait(num_outstanding=0, deps=(lg_t, ph_t))
        for fb in range(NB):
            nb = (fb + 1) % NB  # after the last block: block 0's products again, unused
            dz = gl.load(DZ + bh * M + fb * BF + gl.arange(0, BF, layout=col_f))
            core = gl.exp2(gl.minimum(lg - row_off[:, None], 0.0))
            dl = (ph + dz[None, :]) * core
            dl_rows += gl.sum(dl, axis=1)
            core_op = gl.convert_layout(core.to(gl.bfloat16), op_f)
            dl_op = gl.convert_layout(dl.to(gl.bfloat16), op_f)
            if PING:
                mbarrier.wait(turn.index(ROLE), k_turn & 1, pred=(k_turn <= turns_other) if ROLE == 0 else True)
            dv_t = warpgroup_mma(core_op, ds_s.index(fb), dv, is_async=True)
            dx_t = warpgroup_mma(dl_op, w_s.index(fb), dx, is_async=True)
            lg_t = warpgroup_mma(k_op, w_s.index(nb).permute((1, 0)), zf, use_acc=False, is_async=True)
            ph_t = warpgroup_mma(v_op, ds_s.index(nb).permute((1, 0)), zf, use_acc=False, is_async=True)
            if PING:
                mbarrier.arrive(turn.index(1 - ROLE))
            k_turn += 1
            dv, dx, lg, ph, core_op, dl_op = warpgroup_mma_wait(
                num_outstanding=0, deps=(dv_t, dx_t, lg_t, ph_t, core_op, dl_op))
        rd = tile * BLOCK_N + gl.arange(0, BLOCK_N, layout=row_d)
        ok_d = _rows_ok(MASK, b, stride_mb, rd, N, HAS_MASK)
        kf_d = gl.convert_layout(kf, mma_d)
        rows_d = gl.convert_layout(dl_rows, row_d)
        dx = gl.where(ok_d[:, None], dx * LN2 - rows_d[:, None] * (2.0 * LN2 * half_norm_scale) * kf_d, 0.0)
        dv = gl.where(ok_d[:, None], dv + dvs[None, :], 0.0)
        out = bh * N * D + rows[:, None] * D + dc[None, :]
        gl.store(DK + out, gl.convert_layout(dx.to(gl.bfloat16), ld), mask=(rows < N)[:, None])
        gl.store(DV + out, gl.convert_layout(dv.to(gl.bfloat16), ld), mask=(rows < N)[:, None])


# One entry per group: gl.warp_specialize passes its arguments as run-time values, so the group's ROLE cannot
# travel with them and is bound here instead (a constexpr in the argument tuple failed to compile).
@gluon.jit
def _consumer0(turn, w_s, ds_s, K, V, MASK, KMAX, DZ, DVS, DK, DV,
               stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
               H, N, num_tiles, half_norm_scale):
    _consumer(0, turn, w_s, ds_s, K, V, MASK, KMAX, DZ, DVS, DK, DV,
              stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
              H, N, num_tiles, half_norm_scale)


@gluon.jit
def _consumer1(turn, w_s, ds_s, K, V, MASK, KMAX, DZ, DVS, DK, DV,
               stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
               H, N, num_tiles, half_norm_scale):
    _consumer(1, turn, w_s, ds_s, K, V, MASK, KMAX, DZ, DVS, DK, DV,
              stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
              H, N, num_tiles, half_norm_scale)


@gluon.jit
def _favor_key_bwd_pp(
    K, V, MASK, W, KMAX, DS, DZ, DVS, DK, DV,
    stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
    H, N, num_tiles, half_norm_scale, REGS: gl.constexpr,
):
    NB: gl.constexpr = M // BF
    bh = gl.program_id(1)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BF, D], gl.bfloat16)
    w_s = gl.allocate_shared_memory(gl.bfloat16, [NB, BF, D], sl)
    ds_s = gl.allocate_shared_memory(gl.bfloat16, [NB, BF, D], sl)
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(turn.index(0), count=1)
    mbarrier.init(turn.index(1), count=1)
    fr = gl.arange(0, BF, layout=gl.SliceLayout(1, ld))
    dc = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    for i in gl.static_range(NB):
        off = (i * BF + fr)[:, None] * D + dc[None, :]
        w_s.index(i).store(gl.load(W + off))
        ds_s.index(i).store(gl.load(DS + bh * M * D + off))
    fence_async_shared()
    gl.thread_barrier()
    mbarrier.arrive(turn.index(0))  # group 0 goes first
    args = (turn, w_s, ds_s, K, V, MASK, KMAX, DZ, DVS, DK, DV,
            stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
            H, N, num_tiles, half_norm_scale)
    gl.warp_specialize([(_consumer0, args), (_consumer1, args)], [4], [REGS])
