"""Ping-pong Gluon key-side backward (gl_pingpong_key_bwd.py) against the tree's _state_bwd_kernel: agreement, rerun, timing.
One variant per process (PP_BF, PP_PING, PP_MASK from the environment); TIMING=1 adds the 1M timing."""
import os, sys, torch, triton
sys.path.insert(0, "src"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from longseq.attention import triton_linear as tl_mod
from longseq.attention.linear_core import real_token_count
from longseq.attention.performer import PerformerAttention
import gl_pingpong_key_bwd as gl_pp

SMS = torch.cuda.get_device_properties(0).multi_processor_count
REGS = int(os.environ.get("PP_REGS", "232"))
tag = f"BF={int(gl_pp.BF)} PING={int(gl_pp.PING)} MASK={int(gl_pp.HAS_MASK)} REGS={REGS}"
rec = {}


class Rec:
    def __init__(self, name):
        self.name, self.orig = name, getattr(tl_mod, name)

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.orig[grid](*args, **kw)
            rec[self.name] = (grid, args, kw)
        return launch


tl_mod._state_bwd_kernel = Rec("_state_bwd_kernel")


def pp(args, P, dk, dv):
    n, bh = args[18], args[0].shape[0] * args[0].shape[1]
    tiles = triton.cdiv(n, 64)
    gl_pp._favor_key_bwd_pp[(min(P, tiles), bh)](*args[:8], dk, dv, *args[10:17], args[17], n, tiles, args[19],
                                                  REGS=REGS, num_warps=4)


def run(b, h, n, masked, timing):
    torch.manual_seed(n + masked)
    q, k, v, g = (torch.randn(b, h, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    mask = None
    if masked:
        mask = torch.ones(b, n, dtype=torch.bool, device="cuda")
        mask[0, n // 3:] = False
    proj = PerformerAttention(64, n, num_features=256).projection.cuda()
    spec = tl_mod.FeatureSpec("favor", projection=proj, eps=1e-6)
    count = real_token_count(mask, n, torch.float32)
    s, z = tl_mod.fused_state(k, v, mask, count, spec)
    out = tl_mod.fused_readout(q, s, z, spec)
    torch.autograd.grad(out, (q, k, v), g)
    grid, args, kw = rec["_state_bwd_kernel"]
    bh = b * h
    ref = (args[8].clone(), args[9].clone())
    outs = (torch.empty_like(ref[0]), torch.empty_like(ref[1]))
    P = max(1, -(-SMS // bh))
    pp(args, P, *outs)
    torch.cuda.synchronize()
    first = [o.clone() for o in outs]
    pp(args, P, *outs)
    torch.cuda.synchronize()
    same = all(torch.equal(a, o) for a, o in zip(first, outs))
    d = [float((o.float() - r.float()).abs().max() / r.float().abs().max()) for o, r in zip(outs, ref)]
    print(f"{tag} b{b} h{h} n{n} mask={masked}: rel diff dk {d[0]:.2e} dv {d[1]:.2e}, rerun bitwise equal {same}", flush=True)
    if timing:
        t_ref = triton.testing.do_bench(lambda: tl_mod._state_bwd_kernel.orig[grid](*args, **kw), warmup=20, rep=200)
        print(f"  {tag} triton tree kernel: {t_ref:.3f} ms", flush=True)
        for P in sorted({SMS // bh, -(-SMS // bh), 2 * SMS // bh}):
            t = triton.testing.do_bench(lambda: pp(args, P, *outs), warmup=20, rep=200)
            print(f"  {tag} gluon P={P} ({P * bh} CTAs): {t:.3f} ms", flush=True)


if gl_pp.HAS_MASK:
    run(2, 4, 4113, True, False)
    run(1, 2, 777, True, False)
else:
    run(2, 4, 4113, False, False)
    run(1, 3, 200, False, False)
    if os.environ.get("TIMING") == "1":
        run(1, 8, 1 << 20, False, True)
