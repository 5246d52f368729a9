"""Compare the kernel file $CLFILE (mk_cl.py's chunk-loop FAVOR+ backward) with the tree module: forward + grads, FAVOR+, bf16."""
import importlib.util, sys, os, torch
sys.path.insert(0, "scripts"); sys.path.insert(0, "src")
import profile_triton_linear as prof
from longseq.attention.linear_core import real_token_count
from longseq.attention.performer import PerformerAttention
from longseq.attention import triton_linear as tree
spec_ = importlib.util.spec_from_file_location("tlcl", os.environ["CLFILE"]); cl = importlib.util.module_from_spec(spec_)
sys.modules["tlcl"] = cl; spec_.loader.exec_module(cl)
dev = "cuda" if torch.cuda.is_available() else "cpu"
for seq, mask_on in ((int(sys.argv[1]) if len(sys.argv) > 1 else 300, False), (int(sys.argv[1]) if len(sys.argv) > 1 else 300, True)):
    torch.manual_seed(1)
    shape = (2, 2, seq, 64)
    q, k, v, g = (torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(4))
    mask = None
    if mask_on:
        mask = torch.ones(2, seq, dtype=torch.bool, device=dev); mask[1, seq // 3:] = False
    projection = PerformerAttention(64, seq, num_features=256).projection.to(dev)
    count = real_token_count(mask, seq, torch.float32)
    res = {}
    for name, m in (("tree", tree), ("cl", cl)):
        qq, kk, vv = (x.clone().requires_grad_(True) for x in (q, k, v))
        spec = prof.feature_specs(m, projection, seq)["favor"]
        s, z = m.fused_state(kk, vv, mask, count, spec, chunk_tokens=128)
        out = m.fused_readout(qq, s, z, spec, chunk_tokens=128)
        res[name] = (out.detach(), *torch.autograd.grad(out, (qq, kk, vv), g))
    d = [float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(res["cl"], res["tree"])]
    print(f"seq {seq} mask {mask_on}: rel diff (out, dq, dk, dv): " + ", ".join(f"{x:.2e}" for x in d), flush=True)
