"""A kernel file's FAVOR+ (bf16, 256 features) against the tree module's, with and without a padding mask, on the GPU
or on the CPU under TRITON_INTERPRET=1.

usage: check_vs_tree.py FILE SEQ attention|state
  attention: state + read-out, eps 1e-6; max relative differences of (out, dq, dk, dv) (mk_cl.py's files).
  state:     the state stage alone with eps 0.5 and v shifted by 3, so that the eps term's Σv shows in S; of
             (S, z, dk, dv) (mk_sv.py's files).
"""
import importlib.util
import sys

import torch

sys.path.insert(0, "src")
from longseq.attention import triton_linear as tree  # noqa: E402
from longseq.attention.linear_core import real_token_count  # noqa: E402
from longseq.attention.performer import PerformerAttention  # noqa: E402

path, seq, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec_ = importlib.util.spec_from_file_location("tl_candidate", path)
cand = importlib.util.module_from_spec(spec_)
sys.modules["tl_candidate"] = cand
spec_.loader.exec_module(cand)
dev = "cuda" if torch.cuda.is_available() else "cpu"
state_only = mode == "state"
for mask_on in (False, True):
    torch.manual_seed(5 if state_only else 1)
    q, k, v, g = (torch.randn(2, 2, seq, 64, device=dev, dtype=torch.bfloat16) for _ in range(4))
    if state_only:
        v = v + 3.0  # a mean, so Σv is large
    mask = None
    if mask_on:
        mask = torch.ones(2, seq, dtype=torch.bool, device=dev)
        mask[1, seq // 3:] = False
    proj = PerformerAttention(64, seq, num_features=256).projection.to(dev)
    count = real_token_count(mask, seq, torch.float32)
    res = {}
    for name, mod in (("tree", tree), ("candidate", cand)):
        qq, kk, vv = (x.clone().requires_grad_(True) for x in (q, k, v))
        spec = mod.FeatureSpec("favor", projection=proj, eps=0.5 if state_only else 1e-6)
        s, z = mod.fused_state(kk, vv, mask, count, spec, chunk_tokens=128)
        if state_only:
            res[name] = (s.detach(), z.detach(), *torch.autograd.grad((s * 1.7).sum() + (z * 0.3).sum(), (kk, vv)))
        else:
            out = mod.fused_readout(qq, s, z, spec, chunk_tokens=128)
            res[name] = (out.detach(), *torch.autograd.grad(out, (qq, kk, vv), g))
    d = [float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(res["candidate"], res["tree"])]
    names = "S, z, dk, dv" if state_only else "out, dq, dk, dv"
    print(f"seq {seq} mask {mask_on}: rel diff ({names}): " + ", ".join(f"{x:.2e}" for x in d), flush=True)
