"""tl_sv.py's S, z (and grads) against the tree's with a large eps, so the Σv term is visible; masks included."""
import importlib.util, sys, torch
sys.path.insert(0, "src")
from longseq.attention.linear_core import real_token_count
from longseq.attention.performer import PerformerAttention
from longseq.attention import triton_linear as tree
spec_ = importlib.util.spec_from_file_location("tlx", sys.argv[1]); m = importlib.util.module_from_spec(spec_)
sys.modules["tlx"] = m; spec_.loader.exec_module(m)
dev = "cuda" if torch.cuda.is_available() else "cpu"
seq = int(sys.argv[2])
for mask_on in (False, True):
    torch.manual_seed(5)
    q, k, v, g = (torch.randn(2, 2, seq, 64, device=dev, dtype=torch.bfloat16) for _ in range(4))
    v = v + 3.0  # a mean, so Σv is large
    mask = None
    if mask_on:
        mask = torch.ones(2, seq, dtype=torch.bool, device=dev); mask[1, seq // 3:] = False
    proj = PerformerAttention(64, seq, num_features=256).projection.to(dev)
    count = real_token_count(mask, seq, torch.float32)
    res = {}
    for name, mod in (("tree", tree), ("new", m)):
        kk, vv = k.clone().requires_grad_(True), v.clone().requires_grad_(True)
        spec = mod.FeatureSpec("favor", projection=proj, eps=0.5)
        s, z = mod.fused_state(kk, vv, mask, count, spec, chunk_tokens=128)
        res[name] = (s.detach(), z.detach(), *torch.autograd.grad((s * 1.7).sum() + (z * 0.3).sum(), (kk, vv)))
    d = [float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(res["new"], res["tree"])]
    print(f"seq {seq} mask {mask_on}: rel diff (S, z, dk, dv): " + ", ".join(f"{x:.2e}" for x in d), flush=True)
