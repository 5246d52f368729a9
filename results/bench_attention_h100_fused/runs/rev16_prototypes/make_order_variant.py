"""Variant of triton_linear.py: the product that needs no exponentials is issued before the logits product."""
src = open("src/longseq/attention/triton_linear.py").read()
reps = [
    ("""                core = tl.exp2(tl.minimum(_dot(k, tl.trans(w), IEEE) - row_off[:, None], 0.0))
                dv += _dot(core.to(v.dtype), ds_in, IEEE)
                dl = (_dot(v, tl.trans(ds_in), IEEE) + dz[None, :]) * core
""", """                dcore = _dot(v, tl.trans(ds_in), IEEE) + dz[None, :]
                core = tl.exp2(tl.minimum(_dot(k, tl.trans(w), IEEE) - row_off[:, None], 0.0))
                dv += _dot(core.to(v.dtype), ds_in, IEEE)
                dl = dcore * core
"""),
    ("""            core = tl.exp2(_dot(q, tl.trans(w), IEEE) - m_row[:, None])
            dl = (_dot(dnum_in, tl.trans(s), IEEE) + dden[:, None] * z[None, :]) * core
""", """            dcore = _dot(dnum_in, tl.trans(s), IEEE) + dden[:, None] * z[None, :]
            core = tl.exp2(_dot(q, tl.trans(w), IEEE) - m_row[:, None])
            dl = dcore * core
"""),
]
for a, b in reps:
    assert src.count(a) == 1, a
    src = src.replace(a, b)
open("/tmp/tl_order.py", "w").write(src)
