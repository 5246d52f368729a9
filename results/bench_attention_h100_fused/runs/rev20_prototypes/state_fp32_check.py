"""A kernel file's FAVOR+ state stage (S, z) against an fp64 reference, fp32 inputs, 256 features, eps 0.5 and v
shifted by 3 so that the eps term's Σv is most of S; for the interpreter (TRITON_INTERPRET=1), which cannot run bf16.

usage: state_fp32_check.py FILE SEQ   (FILE 'tree': the package's module)
"""
import importlib.util
import sys

import torch

sys.path.insert(0, "src")
from longseq.attention.linear_core import real_token_count  # noqa: E402
from longseq.attention.performer import PerformerAttention  # noqa: E402

path, seq = sys.argv[1], int(sys.argv[2])
if path == "tree":
    from longseq.attention import triton_linear as mod
else:
    spec_ = importlib.util.spec_from_file_location("tl_candidate", path)
    mod = importlib.util.module_from_spec(spec_)
    sys.modules["tl_candidate"] = mod
    spec_.loader.exec_module(mod)
torch.manual_seed(5)
eps = 0.5
k, v = (torch.randn(2, 2, seq, 64) for _ in range(2))
v = v + 3.0
proj = PerformerAttention(64, seq, num_features=256).projection
kd = k.double() * 64 ** -0.25
logit = kd @ proj.double().T - (kd * kd).sum(-1, keepdim=True) / 2
phi = (torch.exp(logit - logit.amax(dim=(-1, -2), keepdim=True)) + eps) / 16
ref_s, ref_z = phi.transpose(-1, -2) @ v.double() / seq, phi.sum(-2) / seq
count = real_token_count(None, seq, torch.float32)
for chunk in (64, 128, None):
    s, z = mod.fused_state(k, v, None, count, mod.FeatureSpec("favor", projection=proj, eps=eps), chunk_tokens=chunk)
    print(f"seq {seq} chunk {chunk}: max |S - ref| {float((s.double() - ref_s).abs().max()):.2e} "
          f"(max |S| {float(ref_s.abs().max()):.2e}), max |z - ref| {float((z.double() - ref_z).abs().max()):.2e}")
