"""Per-kernel GPU times at 1M tokens for several CHUNK_PROGRAMS_PER_SM values (the sequence reductions' chunk
count), each with the tuner's picks cleared so every setting is tuned for its own chunking.
usage: [CAND=kernel_file.py] chunk_sweep.py MAPS PER_SM_LIST [SEQ]"""
import sys
import torch
sys.path.insert(0, "scripts"); sys.path.insert(0, "src")
import profile_triton_linear as prof  # noqa: E402
import importlib.util, os  # noqa: E402
if os.environ.get("CAND"):  # a kernel file instead of the tree's module
    _sp = importlib.util.spec_from_file_location("tl_cand", os.environ["CAND"])
    m = importlib.util.module_from_spec(_sp); sys.modules["tl_cand"] = m; _sp.loader.exec_module(m)
    prof.fused = m
else:
    from longseq.attention import triton_linear as m  # noqa: E402
from longseq.attention.linear_core import real_token_count  # noqa: E402
from longseq.attention.performer import PerformerAttention  # noqa: E402
from triton.testing import do_bench  # noqa: E402

maps = sys.argv[1].split(",")
settings = [int(x) for x in sys.argv[2].split(",")]
seq = int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 20
torch.manual_seed(0)
shape = (1, 8, seq, 64)
q, k, v, g = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
for x in (q, k, v):
    x.requires_grad_(True)
projection = PerformerAttention(64, seq, num_features=256).projection.cuda()
count = real_token_count(None, seq, torch.float32)
specs = prof.feature_specs(m, projection, seq)
tuned = [getattr(m, n) for n in dir(m) if isinstance(getattr(m, n), m._Tuned)]
for rnd in range(2):
    for per_sm in settings:
        m.CHUNK_PROGRAMS_PER_SM = per_sm
        for t in tuned:
            t.best.clear()
        for name in maps:
            spec = specs[name]

            def full():
                s, z = m.fused_state(k, v, None, count, spec)
                m.fused_readout(q, s, z, spec).backward(g)
                q.grad = k.grad = v.grad = None

            full()
            torch.cuda.synchronize()
            kt = prof.kernel_times(spec, q, k, v, g, count)
            t = do_bench(full, warmup=25, rep=200)
            chunks = m._num_chunks(seq, 8 * (2 if name == "favor" else 1), q.device, None)
            short = {kk.replace("_kernel", "").replace("_favor_", "f_")[:24]: round(vv, 3) for kk, vv in kt.items() if vv > 0.01}
            picks = {n: f"{c.kwargs.get('BLOCK_N')}w{c.num_warps}s{c.num_stages}" for n in dir(m)
                     if isinstance(getattr(m, n), m._Tuned) for c in getattr(m, n).best.values()}
            print(f"r{rnd} {name} per_sm {per_sm} chunks {chunks}: do_bench {t:.3f} sum {sum(kt.values()):.3f} | {short}", flush=True)
            if rnd == 0:
                print(f"   picks {picks}", flush=True)
