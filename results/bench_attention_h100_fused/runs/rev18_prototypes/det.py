"""Bitwise reproducibility of a triton_linear file's FAVOR+ state forward (S, z) and whole fwd+bwd, tuned, 1M and 4113."""
import importlib.util, sys, torch
sys.path.insert(0, "scripts"); sys.path.insert(0, "src")
import profile_triton_linear as prof
from longseq.attention.linear_core import real_token_count
from longseq.attention.performer import PerformerAttention
spec_ = importlib.util.spec_from_file_location("tlx", sys.argv[1]); m = importlib.util.module_from_spec(spec_)
sys.modules["tlx"] = m; spec_.loader.exec_module(m)
for seq in (4113, 1 << 20):
    torch.manual_seed(3)
    q, k, v, g = (torch.randn(1, 8, seq, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for x in (q, k, v): x.requires_grad_(True)
    proj = PerformerAttention(64, seq, num_features=256).projection.cuda()
    spec = prof.feature_specs(m, proj, seq)["favor"]
    count = real_token_count(None, seq, torch.float32)
    ref = None; same = True
    for it in range(6):
        s, z = m.fused_state(k, v, None, count, spec)
        out = m.fused_readout(q, s, z, spec)
        grads = torch.autograd.grad(out, (q, k, v), g)
        cur = (s, z, out, *grads)
        if ref is None: ref = [t.clone() for t in cur]
        else: same = same and all(torch.equal(a, b) for a, b in zip(ref, cur))
    print(f"{sys.argv[1]} seq {seq}: 6 runs bitwise equal (S, z, out, dq, dk, dv): {same}", flush=True)
