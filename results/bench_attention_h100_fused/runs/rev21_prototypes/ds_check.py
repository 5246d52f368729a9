"""Hand-written CUDA dS/dz reduction (favor_dstate.cu) against the tree's _favor_readout_bwd_dstate_kernel on the
same recorded arguments: agreement with the tree and with an fp64 reference, bitwise rerun, then do_bench at 1M tokens."""
import os, sys
import torch, triton
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, "src"); sys.path.insert(0, HERE)
from longseq.attention import triton_linear as tl_mod
from longseq.attention.linear_core import real_token_count
from longseq.attention.performer import PerformerAttention
from cudrv import Kernel

SMEM = 2 * (2 * 64 * 72 * 2 + 2 * 64 * 4)
VARIANTS = {"mt1": (256,), "mt2": (128,), "mt2b": (128,)}
# timing-only diagnostics (wrong results by design): the exponential replaced by an add; the dS products removed
DIAGS = {"mt2_noexp": (128,), "mt2_nods": (128,), "mt2b_noexp": (128,), "mt2b_nods": (128,)}
BLOCK = {**VARIANTS, **DIAGS}
kernels = {v: Kernel(os.path.join(HERE, "favor_dstate.cubin"), f"favor_dstate_{v}", SMEM) for v in BLOCK}
print("registers:", {v: k.regs for v, k in kernels.items()}, flush=True)
rec = {}


class Rec:
    def __init__(self, name):
        self.name, self.orig = name, getattr(tl_mod, name)

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.orig[grid](*args, **kw)
            rec[self.name] = (grid, args, kw)
        return launch


tl_mod._favor_readout_bwd_dstate_kernel = Rec("_favor_readout_bwd_dstate_kernel")


def cuda_ds(v, args, chunks):
    q, w, g, mrow, rowv, rowz = args[:6]
    H, N = args[11], args[12]
    bh = mrow.shape[0]
    chunk_len = -(-N // chunks)
    ds = torch.empty(bh, chunks, 256, 64, device="cuda", dtype=torch.float32)
    dz = torch.empty(bh, chunks, 256, device="cuda", dtype=torch.float32)
    kernels[v]((2, chunks, bh), (BLOCK[v][0], 1, 1), q, w, g, mrow, rowv, rowz, ds, dz,
               ("i64", args[8]), ("i64", args[9]), ("i64", args[10]), ("i32", H), ("i32", N),
               ("i32", chunk_len), ("i32", chunks), ("f32", args[15]), ("f32", args[16]))
    return ds, dz


def reference(args):
    q, w, g, mrow, rowv, rowz = args[:6]
    eps, c = args[15], args[16]
    bh, n = mrow.shape
    qd = q.reshape(bh, n, 64).double()
    lg = qd @ w.double().T - mrow.double()[..., None]
    pt = c * torch.exp2(lg) + c * eps
    ds = pt.transpose(1, 2) @ (g.reshape(bh, n, 64).double() * rowv.double()[..., None])
    dz = (pt * rowz.double()[..., None]).sum(1)
    return ds, dz


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def run(b, h, n, timing):
    torch.manual_seed(n)
    q, k, v, g = (torch.randn(b, h, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    proj = PerformerAttention(64, n, num_features=256).projection.cuda()
    spec = tl_mod.FeatureSpec("favor", projection=proj, eps=1e-6)
    count = real_token_count(None, n, torch.float32)
    s, z = tl_mod.fused_state(k, v, None, count, spec)
    out = tl_mod.fused_readout(q, s, z, spec)
    torch.autograd.grad(out, (q, k, v), g)
    torch.cuda.synchronize()
    grid, args, kw = rec["_favor_readout_bwd_dstate_kernel"]
    assert args[1].shape == (256, 64) and args[1].is_contiguous() and args[1].dtype == torch.bfloat16
    assert args[2].is_contiguous() and args[0].stride(-1) == 1
    tree_ds, tree_dz = args[6].sum(1), args[7].sum(1)
    chunks = args[14]
    ref = reference(args) if n <= 65536 else None
    line = f"b{b} h{h} n{n} tree chunks={chunks}"
    if ref is not None:
        line += f" | tree vs fp64 ref: dS {rel(tree_ds, ref[0]):.2e} dz {rel(tree_dz, ref[1]):.2e}"
    print(line, flush=True)
    for var in VARIANTS:
        for ch in sorted({chunks, 5, 1}):
            ds, dz = cuda_ds(var, args, ch)
            ds2, dz2 = cuda_ds(var, args, ch)
            torch.cuda.synchronize()
            same = torch.equal(ds, ds2) and torch.equal(dz, dz2)
            cds, cdz = ds.sum(1), dz.sum(1)
            msg = f"  {var} chunks={ch}: vs tree dS {rel(cds, tree_ds):.2e} dz {rel(cdz, tree_dz):.2e}"
            if ref is not None:
                msg += f" | vs fp64 ref dS {rel(cds, ref[0]):.2e} dz {rel(cdz, ref[1]):.2e}"
            print(msg + f" | rerun bitwise {same} | finite {bool(torch.isfinite(ds).all() and torch.isfinite(dz).all())}",
                  flush=True)
    if timing and os.environ.get("DIAG") == "1":
        time_rounds("diag ", grid, args, kw, chunks, ("mt2", "mt2_noexp", "mt2_nods", "mt2b", "mt2b_noexp", "mt2b_nods"),
                    (33, 48))
    elif timing:
        time_rounds("", grid, args, kw, chunks, VARIANTS, (8, 12, 16, 17, 24, 25, 33, 48, 66))


def time_rounds(label, grid, args, kw, chunks, names, chunk_counts):
    """Two rounds of do_bench: the tree's tuned kernel, then each CUDA entry at each chunk count."""
    for rnd in range(2):
        t = triton.testing.do_bench(lambda: tl_mod._favor_readout_bwd_dstate_kernel.orig[grid](*args, **kw),
                                    warmup=20, rep=200)
        print(f"  {label}round {rnd} tree kernel (tuned, {chunks} chunks): {t:.3f} ms", flush=True)
        for var in names:
            res = [f"{ch}:{triton.testing.do_bench(lambda: cuda_ds(var, args, ch), warmup=20, rep=200):.3f}"
                   for ch in chunk_counts]
            print(f"  {label}round {rnd} cuda {var} (regs {kernels[var].regs}) ms by chunks: " + " ".join(res),
                  flush=True)


if __name__ == "__main__":
  print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
  run(2, 4, 4113, False)
  run(1, 3, 200, False)
  run(1, 2, 65536, False)
  if os.environ.get("TIMING") == "1":
      run(1, 8, 1 << 20, True)
