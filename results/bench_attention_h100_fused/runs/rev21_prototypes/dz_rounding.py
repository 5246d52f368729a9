"""CPU emulation (fp64, no GPU) of why the CUDA prototype's dz is further from fp64 than the tree's: the two kernels
round different products to bf16. Data from a FAVOR+ forward on 4113 random tokens with the package's projection.
Run from the repository root: python results/bench_attention_h100_fused/runs/rev21_prototypes/dz_rounding.py"""
import sys

import torch

sys.path.insert(0, "src")
from longseq.attention import triton_linear as tl_mod  # noqa: E402
from longseq.attention.performer import PerformerAttention  # noqa: E402

torch.manual_seed(4113)
bf = torch.bfloat16
n, d, m = 4113, 64, 256
q, k, v, g = (torch.randn(n, d).to(bf).double() for _ in range(4))
spec = tl_mod.FeatureSpec("favor", projection=PerformerAttention(d, n, num_features=m).projection, eps=1e-6)
w = tl_mod._favor_rows(spec, torch.zeros(1, d, dtype=bf)).double()  # kernel rows: log2 units, bf16 values
c, eps, half_norm = 1 / m**0.5, 1e-6, 0.5 / d**0.5 * 1.4426950408889634
lk = k @ w.T - (k * k).sum(1, keepdim=True) * half_norm
phik = c * (torch.exp2(lk - lk.max()) + eps)  # keys: one stabiliser per head
s_state, z = phik.T @ v / n, phik.sum(0) / n
lq = q @ w.T
pt = c * torch.exp2(lq - lq.max(1, keepdim=True).values) + c * eps  # queries: row max, as the kernels
den = pt @ z
o = (pt @ s_state) / den[:, None]
rv = 1 / den
dden = -(g * o).sum(1) * rv


def bf16(x):
    return x.float().to(bf).double()


def hilo(x):
    hi = bf16(x)
    return hi + bf16(x - hi)


def rel(a, ref):
    return float((a - ref).abs().max() / ref.abs().max())


dz = (pt * dden[:, None]).sum(0)
ds = pt.T @ (g * rv[:, None])
print(f"dz: tree order bf16(pt)·hilo(dden) {rel((bf16(pt) * hilo(dden)[:, None]).sum(0), dz):.2e}, "
      f"prototype order bf16(pt/den)·hilo(dden·den) {rel((bf16(pt * rv[:, None]) * hilo(dden / rv)[:, None]).sum(0), dz):.2e}")
print(f"dS: tree order bf16(pt)·bf16(dO/den) {rel(bf16(pt).T @ bf16(g * rv[:, None]), ds):.2e}, "
      f"prototype order bf16(pt/den)·dO {rel(bf16(pt * rv[:, None]).T @ g, ds):.2e}")
# Each row's largest feature has core = 1, so pt = c(1 + eps) rounds to bf16 almost exactly in the tree's order.
scale = 4 / 3  # makes that value inexact
scaled = bf16(pt * scale) / scale
is_max = pt == pt.max(1, keepdim=True).values
print(f"dz, tree order with pt·4/3 rounded: {rel((scaled * hilo(dden)[:, None]).sum(0), dz):.2e}; "
      f"the same with each row's max feature kept exact: "
      f"{rel((torch.where(is_max, pt, scaled) * hilo(dden)[:, None]).sum(0), dz):.2e}")
