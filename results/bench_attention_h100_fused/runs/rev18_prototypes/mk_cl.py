"""Write argv[1]: the tree's triton_linear plus chunk-loop, one-block, transposed FAVOR+ dq and
state-backward kernels (prototype), switched by CL_DQ / CL_SB (env, default on)."""
import sys

s = open("src/longseq/attention/triton_linear.py").read()
new_kernels = '''
    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len"])
    def _favor_dq_chunk_kernel(
        Q, W, S, Z, SCOL, ZSUM, G, OUT, DEN, MROW, DQ, ROW_V, ROW_Z,
        stride_qb, stride_qh, stride_qn,
        H, N, chunk_len,
        half_norm_scale, eps, c,
        D: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # PROTOTYPE: dq per (chunk, batch·head), every feature in one block, W and S loaded once.
        # Transposed tiles (features, tokens): the features are the products' M, so 8 warps split them.
        chunk = tl.program_id(0)
        bh = tl.program_id(1)
        cols = tl.arange(0, D)
        f = tl.arange(0, MP)
        real_f = f < M
        w = tl.load(W + f[:, None] * D + cols[None, :], mask=real_f[:, None], other=0.0)
        s = tl.load(S + bh * M * D + f[:, None] * D + cols[None, :], mask=real_f[:, None], other=0.0)
        z = tl.load(Z + bh * M + f, mask=real_f, other=0.0)
        scol = tl.load(SCOL + bh * D + cols)
        zsum = tl.load(ZSUM + bh)
        q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            inside = rows < stop
            q = _q_tile_load(q_base, row0, stop, stride_qn, cols, BLOCK_N)
            io = bh * N * D + rows[:, None] * D + cols[None, :]
            dnum, dden, go_clamped = _readout_row_grads(G, OUT, DEN, ROW_V, ROW_Z, io, bh, rows, inside, N)
            dl_rows = go_clamped - (c * eps) * (tl.sum(dnum * scol[None, :], axis=1) + dden * zsum)
            m_row = tl.load(MROW + bh * N + rows, mask=inside, other=0.0)
            dnum_in = (c * dnum).to(q.dtype)
            dden = c * dden
            core_t = tl.exp2(_dot(w, tl.trans(q), IEEE) - m_row[None, :])  # (MP, BLOCK_N)
            dl_t = (_dot(s, tl.trans(dnum_in), IEEE) + z[:, None] * dden[None, :]) * core_t
            dx_t = _dot(tl.trans(w), dl_t.to(w.dtype), IEEE)  # (D, BLOCK_N)
            dx = (tl.trans(dx_t) + dl_rows[:, None] * (-2.0 * half_norm_scale / _LN2) * q.to(tl.float32)) * _LN2
            tl.store(DQ + io, dx.to(DQ.dtype.element_ty), mask=inside[:, None])

    @_Tuned
    @triton.jit(do_not_specialize=_LENGTHS + ["chunk_len"])
    def _favor_state_bwd_chunk_kernel(
        K, V, MASK, W, KMAX, DS, DZ, DVS, DK, DV,
        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
        H, N, chunk_len, half_norm_scale,
        HAS_MASK: tl.constexpr, D: tl.constexpr, M: tl.constexpr, MP: tl.constexpr,
        BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        # PROTOTYPE: FAVOR+ key-side backward per (chunk, batch·head), every feature in one block,
        # transposed tiles as in _favor_dq_chunk_kernel.
        chunk = tl.program_id(0)
        bh = tl.program_id(1)
        cols = tl.arange(0, D)
        f = tl.arange(0, MP)
        real_f = f < M
        w = tl.load(W + f[:, None] * D + cols[None, :], mask=real_f[:, None], other=0.0)
        ds_in = tl.load(DS + bh * M * D + f[:, None] * D + cols[None, :], mask=real_f[:, None], other=0.0)
        dz = tl.load(DZ + bh * M + f, mask=real_f, other=0.0)
        dvs = tl.load(DVS + bh * D + cols)
        kmax = tl.load(KMAX + bh)
        k_base = _head_base(K, bh, H, stride_kb, stride_kh)
        v_base = _head_base(V, bh, H, stride_vb, stride_vh)
        mask_base = _head_base(MASK, bh, H, stride_mb, 0)
        start = chunk * chunk_len
        stop = tl.minimum(start + chunk_len, N)
        for row0 in range(start, stop, BLOCK_N):
            rows = row0 + tl.arange(0, BLOCK_N)
            k, v, ok = _kv_tile_loads(k_base, v_base, mask_base, row0, stop, stride_kn, stride_vn, cols,
                                      HAS_MASK, BLOCK_N)
            kf = k.to(tl.float32)
            row_off = tl.sum(kf * kf, axis=1) * half_norm_scale + kmax
            core_t = tl.exp2(tl.minimum(_dot(w, tl.trans(k), IEEE) - row_off[None, :], 0.0))  # (MP, BLOCK_N)
            dv = tl.trans(_dot(tl.trans(ds_in), core_t.to(v.dtype), IEEE))
            dl_t = (_dot(ds_in, tl.trans(v), IEEE) + dz[:, None]) * core_t
            dx = tl.trans(_dot(tl.trans(w), dl_t.to(w.dtype), IEEE))
            dl_rows = tl.sum(dl_t, axis=0)
            dx = tl.where(ok[:, None], dx * _LN2 - dl_rows[:, None] * (2.0 * _LN2 * half_norm_scale) * kf, 0.0)
            dv = tl.where(ok[:, None], dv + dvs[None, :], 0.0)
            out = bh * N * D + rows[:, None] * D + cols[None, :]
            inside = rows < stop
            tl.store(DK + out, dx.to(DK.dtype.element_ty), mask=inside[:, None])
            tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=inside[:, None])
'''
anchor = "    @_TunedLoop\n    @triton.jit(do_not_specialize=_LENGTHS + [\"chunk_len\"])\n    def _elu_cos_readout_fwd_kernel("
assert s.count(anchor) == 1
s = s.replace(anchor, new_kernels + "\n" + anchor)
old_dq = """                _favor_readout_bwd_dq_kernel[grid](
                    q, plan.w, s, z, scol, zsum, g, out, den, m_row, dq, row_v, row_z,
                    *_strides(q), heads, n, plan.half_norm_scale, plan.eps, plan.c,
                    D=d, M=plan.m, BLOCK_M=plan.block_m, IEEE=plan.ieee,
                )"""
new_dq = """                if CL_DQ and not plan.ieee and plan.m <= FAVOR_ONE_BLOCK:
                    cl, cn = _num_chunks(n, bh, q.device, ctx.chunk_tokens)
                    _favor_dq_chunk_kernel[(cn, bh)](
                        q, plan.w, s, z, scol, zsum, g, out, den, m_row, dq, row_v, row_z,
                        *_strides(q), heads, n, cl, plan.half_norm_scale, plan.eps, plan.c,
                        D=d, M=plan.m, MP=triton.next_power_of_2(plan.m), IEEE=plan.ieee,
                    )
                else:
""" + "\n".join("    " + l for l in old_dq.split("\n"))
assert s.count(old_dq) == 1
s = s.replace(old_dq, new_dq)
old_sb = """            _state_bwd_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), bh)](
                k, v, mask if mask is not None else k, plan.w if plan.w is not None else k, key_max,
                ds_in, dz, dvs, dk, dv,
                *_strides(k), *_strides(v), mask.stride(0) if mask is not None else 0,
                heads, n, plan.half_norm_scale * LOG2E, _trig_table(plan, n, ctx.offset, k),
                FEAT=plan.feat, HAS_MASK=mask is not None, D=d, M=plan.m, BLOCK_M=plan.block_m, IEEE=plan.ieee,
            )"""
new_sb = """            if CL_SB and plan.feat == 0 and not plan.ieee and plan.m <= FAVOR_ONE_BLOCK:
                cl, cn = _num_chunks(n, bh, k.device, ctx.chunk_tokens)
                _favor_state_bwd_chunk_kernel[(cn, bh)](
                    k, v, mask if mask is not None else k, plan.w, key_max, ds_in, dz, dvs, dk, dv,
                    *_strides(k), *_strides(v), mask.stride(0) if mask is not None else 0,
                    heads, n, cl, plan.half_norm_scale * LOG2E,
                    HAS_MASK=mask is not None, D=d, M=plan.m, MP=triton.next_power_of_2(plan.m), IEEE=plan.ieee,
                )
            else:
""" + "\n".join("    " + l for l in old_sb.split("\n"))
assert s.count(old_sb) == 1
s = s.replace(old_sb, new_sb)
s = s.replace("FAVOR_ONE_BLOCK = 256\n", "FAVOR_ONE_BLOCK = 256\nCL_DQ = os.environ.get('CL_DQ', '1') == '1'\nCL_SB = os.environ.get('CL_SB', '1') == '1'\n", 1)
open(sys.argv[1], "w").write(s)
