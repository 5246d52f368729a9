"""Per-kernel GPU times (torch.profiler) and fwd+bwd do_bench for several triton_linear files, FAVOR+ at 1M,
interleaved twice; agreement of each with the first file and with an fp32 torch reference on a 64K slice."""
import importlib.util, sys, os
import torch
sys.path.insert(0, "scripts"); sys.path.insert(0, "src")
import profile_triton_linear as prof
from longseq.attention.linear_core import real_token_count
from longseq.attention.performer import PerformerAttention
from triton.testing import do_bench

files = sys.argv[1].split(",")
seq = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
mods = {}
for i, f in enumerate(files):
    if f == "tree":
        from longseq.attention import triton_linear as m
    else:
        spec = importlib.util.spec_from_file_location(f"tlv{i}", f); m = importlib.util.module_from_spec(spec)
        sys.modules[f"tlv{i}"] = m; spec.loader.exec_module(m)
    mods[f] = m
torch.manual_seed(0)
shape = (1, 8, seq, 64)
q, k, v, g = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
for x in (q, k, v): x.requires_grad_(True)
projection = PerformerAttention(64, seq, num_features=256).projection.cuda()
count = real_token_count(None, seq, torch.float32)
res = {}
for rnd in range(2):
    for f, m in mods.items():
        prof.fused = m
        spec = prof.feature_specs(m, projection, seq)["favor"]
        s, z = m.fused_state(k, v, None, count, spec)
        out = m.fused_readout(q, s, z, spec)
        res[f] = (out.detach(), *torch.autograd.grad(out, (q, k, v), g))
        kt = prof.kernel_times(spec, q, k, v, g, count)
        def full():
            s, z = m.fused_state(k, v, None, count, spec)
            m.fused_readout(q, s, z, spec).backward(g)
            q.grad = k.grad = v.grad = None
        t = do_bench(full, warmup=25, rep=200)
        short = {kk.replace("_kernel", "").replace("_favor_", "f_")[:28]: round(vv, 3) for kk, vv in kt.items() if vv > 0.01}
        print(f"r{rnd} {os.path.basename(f)}: fwd+bwd do_bench {t:.3f} ms, kernel sum {sum(kt.values()):.3f} | {short}", flush=True)
base = files[0]
for f in files[1:]:
    d = [float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(res[f], res[base])]
    print(f"{os.path.basename(f)} vs {os.path.basename(base)} rel diff (out, dq, dk, dv): " + ", ".join(f"{x:.2e}" for x in d))
