"""Write argv[1]: the tree plus Σv summed inside the FAVOR+ state forward, whose programs then take
all features in one block (one program per chunk reads each v tile once). SV_BM env: that block (default 256)."""
import sys

s = open("src/longseq/attention/triton_linear.py").read()
def rep(a, b, n=1):
    global s
    assert s.count(a) == n, (s.count(a), a)
    s = s.replace(a, b)
rep("""    def _favor_state_tile(acc, zacc, m_run, w, k_base, v_base, mask_base, rows, stop, cols,
                          stride_kn, stride_vn, half_norm_scale,
                          MASKED: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr):""",
"""    def _favor_state_tile(acc, zacc, m_run, vacc, w, k_base, v_base, mask_base, rows, stop, cols,
                          stride_kn, stride_vn, half_norm_scale,
                          MASKED: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr, SUM_V: tl.constexpr):""")
rep("""        zacc = zacc * alpha + tl.sum(pt, axis=1)
        return acc, zacc, m_new""", """        zacc = zacc * alpha + tl.sum(pt, axis=1)
        if SUM_V:
            vacc += v.to(tl.float32)
        return acc, zacc, m_new, vacc""")
rep("""        K, V, MASK, W, S_part, Z_part, M_part,
        stride_kb,""", """        K, V, MASK, W, S_part, Z_part, M_part, VS_part,
        stride_kb,""")
rep("""        HAS_MASK: tl.constexpr, D: tl.constexpr, M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr,
    ):""", """        HAS_MASK: tl.constexpr, D: tl.constexpr, M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr, SUM_V: tl.constexpr,
    ):""")
rep("""        m_run = tl.full((BLOCK_M,), _NEG, tl.float32)
        # Whole tiles""", """        m_run = tl.full((BLOCK_M,), _NEG, tl.float32)
        vacc = tl.zeros((BLOCK_N, D), dtype=tl.float32)
        # Whole tiles""")
rep("""            acc, zacc, m_run = _favor_state_tile(
                acc, zacc, m_run, w, k_base, v_base, mask_base, row0 + tl.arange(0, BLOCK_N), stop,
                cols, stride_kn, stride_vn, half_norm_scale, False, HAS_MASK, IEEE)""",
"""            acc, zacc, m_run, vacc = _favor_state_tile(
                acc, zacc, m_run, vacc, w, k_base, v_base, mask_base, row0 + tl.arange(0, BLOCK_N), stop,
                cols, stride_kn, stride_vn, half_norm_scale, False, HAS_MASK, IEEE, SUM_V)""")
rep("""            acc, zacc, m_run = _favor_state_tile(
                acc, zacc, m_run, w, k_base, v_base, mask_base, row0 + tl.arange(0, BLOCK_N), stop,
                cols, stride_kn, stride_vn, half_norm_scale, True, HAS_MASK, IEEE)""",
"""            acc, zacc, m_run, vacc = _favor_state_tile(
                acc, zacc, m_run, vacc, w, k_base, v_base, mask_base, row0 + tl.arange(0, BLOCK_N), stop,
                cols, stride_kn, stride_vn, half_norm_scale, True, HAS_MASK, IEEE, SUM_V)""")
rep("""        tl.store(M_part + part * M + fcols, m_run)
""", """        tl.store(M_part + part * M + fcols, m_run)
        if SUM_V:
            tl.store(VS_part + part * D + cols, tl.sum(vacc, axis=0))
""")
rep("""        nfb = plan.m // plan.block_m_outer if favor else 1
        chunk_len, chunks = _num_chunks(n, bh * nfb, dev, chunk_tokens)""",
"""        sum_v = favor and not plan.ieee and plan.m <= SV_BM
        nfb = (1 if sum_v else plan.m // plan.block_m_outer) if favor else 1
        chunk_len, chunks = _num_chunks(n, bh * nfb, dev, chunk_tokens)""")
rep("""            _favor_state_fwd_kernel[(nfb, chunks, bh)](
                k, v, mask_arg, plan.w, s_part, z_part, m_part,
                *_strides(k), *_strides(v), mask_stride, heads, n, chunk_len, chunks, plan.half_norm_scale * LOG2E,
                HAS_MASK=mask is not None, D=d, M=plan.m, BLOCK_M=plan.block_m_outer, IEEE=plan.ieee,
            )
            vs_part = torch.empty(bh, triton.cdiv(n, VALUE_SUM_ROWS), d, device=dev, dtype=torch.float32)
            _value_sum_kernel[(vs_part.shape[1], bh)](
                v, mask_arg, vs_part, *_strides(v), mask_stride, heads, n,
                HAS_MASK=mask is not None, D=d, ROWS=VALUE_SUM_ROWS, BLOCK_N=VALUE_SUM_BLOCK, num_warps=8,
            )""", """            vs_part = torch.empty(bh, chunks if sum_v else triton.cdiv(n, VALUE_SUM_ROWS), d, device=dev,
                                  dtype=torch.float32)
            _favor_state_fwd_kernel[(nfb, chunks, bh)](
                k, v, mask_arg, plan.w, s_part, z_part, m_part, vs_part,
                *_strides(k), *_strides(v), mask_stride, heads, n, chunk_len, chunks, plan.half_norm_scale * LOG2E,
                HAS_MASK=mask is not None, D=d, M=plan.m, BLOCK_M=plan.m if sum_v else plan.block_m_outer,
                IEEE=plan.ieee, SUM_V=sum_v,
            )
            if not sum_v:
                _value_sum_kernel[(vs_part.shape[1], bh)](
                    v, mask_arg, vs_part, *_strides(v), mask_stride, heads, n,
                    HAS_MASK=mask is not None, D=d, ROWS=VALUE_SUM_ROWS, BLOCK_N=VALUE_SUM_BLOCK, num_warps=8,
                )""")
rep("FAVOR_ONE_BLOCK = 256\n", "FAVOR_ONE_BLOCK = 256\nSV_BM = int(os.environ.get('SV_BM', '256'))\n")
open(sys.argv[1], "w").write(s)
