"""Make variants of triton_linear.py with part of the FAVOR+ exponentials on the FMA pipe (polynomial)."""
import sys
src = open("src/longseq/attention/triton_linear.py").read()
helper = '''
    @triton.jit
    def _exp2_fma(x):
        # 2^x without the MUFU unit: x = n + f (n = round(x) by the 1.5·2^23 trick, f in [-1/2, 1/2]),
        # 2^f by a degree-3 relative-minimax polynomial (7.5e-5), n added to the exponent bits.
        x = tl.maximum(x, -125.0)
        j = x + 12582912.0
        f = x - (j - 12582912.0)
        p = f * 0.055171166 + 0.24261111
        p = p * f + 0.69326109
        p = p * f + 0.99992806
        bits = p.to(tl.int32, bitcast=True) + (j.to(tl.int32, bitcast=True) << 23)
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _exp2_mix(x):
        if _POLY == 0:
            return tl.exp2(x)
        R: tl.constexpr = x.shape[0]
        C: tl.constexpr = x.shape[1]
        a, b = tl.split(tl.reshape(x, (R, C // 2, 2)))
        if _POLY == 2:
            b = _exp2_fma(b)
        elif _POLY == 1:
            b = _exp2_fma(b)
            a = _exp2_fma(a)
        else:
            b1, b2 = tl.split(tl.reshape(b, (R, C // 4, 2)))
            b = tl.reshape(tl.join(tl.exp2(b1), _exp2_fma(b2)), (R, C // 2))
        return tl.reshape(tl.join(tl.exp2(a) if _POLY != 1 else a, b), (R, C))
'''
anchor = "    @triton.jit\n    def _hi_lo_cols("
assert anchor in src
reps = [
    ("pt = tl.exp2(lt - m_new[:, None])", "pt = _exp2_mix(lt - m_new[:, None])"),
    ("core = tl.exp2(tl.minimum(_dot(k, tl.trans(w), IEEE) - row_off[:, None], 0.0))",
     "core = _exp2_mix(tl.minimum(_dot(k, tl.trans(w), IEEE) - row_off[:, None], 0.0))"),
    ("p = tl.exp2(lg - m_row[:, None]).to(q.dtype)", "p = _exp2_mix(lg - m_row[:, None]).to(q.dtype)"),
    ("core = tl.exp2(_dot(q, tl.trans(w), IEEE) - m_row[:, None])", "core = _exp2_mix(_dot(q, tl.trans(w), IEEE) - m_row[:, None])"),
    ("pt = tl.exp2(_dot(w, tl.trans(q), IEEE) + neg_m[None, :])", "pt = _exp2_mix(_dot(w, tl.trans(q), IEEE) + neg_m[None, :])"),
]
import os
sites = [int(c) for c in os.environ.get('SITES', '01234')]
for poly in sys.argv[1:]:
    s = src.replace(anchor, helper + "\n" + anchor)
    for i, (a, b) in enumerate(reps):
        if i not in sites: continue
        assert s.count(a) == 1, a
        s = s.replace(a, b)
    s = s.replace("    _NEG = ", f"    _POLY = tl.constexpr({poly})\n    _NEG = ", 1) if "_NEG = " in s else None
    assert s
    open(f"/tmp/tl_poly{poly}" + os.environ.get("TAG", "") + ".py", "w").write(s)
    print("wrote", poly)
