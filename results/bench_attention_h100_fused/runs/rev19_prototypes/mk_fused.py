"""Write a kernel file whose FAVOR+ read-out backward is one kernel (dq and the dS/dz partials from one feature tile).

usage: mk_fused.py OUT [BLOCK_M]   (BLOCK_M: features per program, 128 (default) or 64)

One program per (feature block, sequence chunk, batch·head), tiles transposed (features, tokens) as the tree's dS/dz
kernel has them; the block's dS/dz accumulators stay in registers over the chunk, and its share of dq goes into a
zeroed fp32 buffer by atomic adds (two feature blocks: two adds per element, so the sum does not depend on their
order; four blocks: it does), cast to bf16 afterwards. Only for bf16/fp16 with M a multiple of BLOCK_M (the
prototype's limits). The tuner's trial launches also add into the buffer, so the first, tuning call's dq is wrong; the
timings and the post-tuning comparisons are not affected. Patches the tree's triton_linear.py, so its loads and
per-row algebra repeat the tree's dq and dS/dz kernels on purpose.
"""
import pathlib
import sys

out, bm = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "128")
root = pathlib.Path(__file__).resolve().parents[4]
s = (root / "src/longseq/attention/triton_linear.py").read_text()


def sub(old: str, new: str) -> None:
    global s
    assert s.count(old) == 1, old[:60]
    s = s.replace(old, new)


sub('''        fixed = {"PREFETCH": 1} if loop else {}
        if interpreter_on():''', '''        if loop == "fused":
            if interpreter_on():
                return [triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=1)]
            if os.environ.get("LONGSEQ_TRITON_TUNE", "1") == "0":
                return [triton.Config({"BLOCK_N": 64}, num_warps=8, num_stages=2)]
            return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=st)
                    for bn in (32, 64) for w in (4, 8) for st in (2, 3)]
        fixed = {"PREFETCH": 1} if loop else {}
        if interpreter_on():''')
sub('''    class _TunedLoop(_Tuned):''', '''    class _TunedFused(_Tuned):
        loop = "fused"

    class _TunedLoop(_Tuned):''')
sub('''    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS)
    def _elu_cos_readout_bwd_dq_kernel(''', '''    @_TunedFused
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len", "num_chunks"])
    def _favor_readout_bwd_fused_kernel(
        Q, W, S, Z, SCOL, ZSUM, G, OUT, DEN, MROW, DQ_ACC, DS_part, DZ_part,
        stride_qb, stride_qh, stride_qn,
        H, N, chunk_len, num_chunks,
        half_norm_scale, eps, c,
        D: tl.constexpr, M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        fb = tl.program_id(0)
        chunk = tl.program_id(1)
        bh = tl.program_id(2)
        cols = tl.arange(0, D)
        q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        fcols = fb * BLOCK_M + tl.arange(0, BLOCK_M)
        w = tl.load(W + fcols[:, None] * D + cols[None, :])
        s = tl.load(S + bh * M * D + fcols[:, None] * D + cols[None, :])
        z = tl.load(Z + bh * M + fcols)
        scol = tl.load(SCOL + bh * D + cols)
        zsum = tl.load(ZSUM + bh)
        row_scale = tl.where(fb == 0, 1.0, 0.0)  # the row term (dq kernel's dl_rows) is added by block 0 only
        acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        zacc = tl.zeros((BLOCK_M, 16), dtype=tl.float32)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            inside = rows < stop
            q = _q_tile_load(q_base, row0, stop, stride_qn, cols, BLOCK_N)
            io = bh * N * D + rows[:, None] * D + cols[None, :]
            g = tl.load(G + io, mask=inside[:, None], other=0.0).to(tl.float32)
            o = tl.load(OUT + io, mask=inside[:, None], other=0.0).to(tl.float32)
            den = tl.load(DEN + bh * N + rows, mask=inside, other=1.0)
            neg_m = -tl.load(MROW + bh * N + rows, mask=inside, other=0.0)
            rden = 1.0 / tl.maximum(den, _FLOOR)
            go = tl.sum(g * o, axis=1)
            clamped = den < _FLOOR
            dden = tl.where(clamped, 0.0, -go * rden)
            dnum = g * rden[:, None]
            dl_rows = tl.where(clamped, go, 0.0) - (c * eps) * (tl.sum(dnum * scol[None, :], axis=1) + dden * zsum)
            core = tl.exp2(_dot(w, tl.trans(q), IEEE) + neg_m[None, :])  # (BLOCK_M, BLOCK_N)
            dnum_b = dnum.to(q.dtype)
            pt = (core * c + c * eps).to(q.dtype)
            acc += _dot(pt, dnum_b, IEEE)
            zacc += _dot(pt, _hi_lo_cols(dden, q.dtype), IEEE)
            dlt = (_dot(s, tl.trans(dnum_b), IEEE) * c + z[:, None] * (c * dden)[None, :]) * core
            dx = (row_scale * dl_rows)[:, None] * (-2.0 * half_norm_scale / _LN2) * q.to(tl.float32)
            dx += _dot(tl.trans(dlt.to(q.dtype)), w, IEEE)
            tl.atomic_add(DQ_ACC + io, dx * _LN2, mask=inside[:, None], sem="relaxed")
        part = bh * num_chunks + chunk
        tl.store(DS_part + part * M * D + fcols[:, None] * D + cols[None, :], acc)
        tl.store(DZ_part + part * M + fcols, _hi_lo_sum(zacc))

    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS)
    def _elu_cos_readout_bwd_dq_kernel(''')
sub('''            if favor:
                m_row, scol, zsum = favor_rows
                _favor_readout_bwd_dq_kernel[grid](''', '''            if favor and not plan.ieee:
                m_row, scol, zsum = favor_rows
                nfb2 = plan.m // FUSED_BM
                chunk_len, chunks = _num_chunks(n, bh * nfb2, q.device, ctx.chunk_tokens)
                ds_part = torch.empty(bh, chunks, plan.m, d, device=q.device, dtype=torch.float32)
                dz_part = torch.empty(bh, chunks, plan.m, device=q.device, dtype=torch.float32)
                dq_acc = torch.zeros(batch, heads, n, d, device=q.device, dtype=torch.float32)
                _favor_readout_bwd_fused_kernel[(nfb2, chunks, bh)](
                    q, plan.w, s, z, scol, zsum, g, out, den, m_row, dq_acc, ds_part, dz_part,
                    *_strides(q), heads, n, chunk_len, chunks, plan.half_norm_scale, plan.eps, plan.c,
                    D=d, M=plan.m, BLOCK_M=FUSED_BM, IEEE=plan.ieee,
                )
                dq = dq_acc.to(q.dtype)
            elif favor:
                m_row, scol, zsum = favor_rows
                _favor_readout_bwd_dq_kernel[grid](''')
sub("LOG2E = 1.4426950408889634", f"FUSED_BM = {int(bm)}\nLOG2E = 1.4426950408889634")
pathlib.Path(out).write_text(s)
