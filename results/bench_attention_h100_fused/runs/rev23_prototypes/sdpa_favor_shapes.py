"""Revision 23: how fast do NVIDIA's own fused attention kernels run the work of one FAVOR+ pass?

A FAVOR+ pass at 1M tokens (8 heads, head_dim 64, 256 features) has the shape of two attention problems:

- the state stage ``S = Σ_j exp(w_f·k_j − …) v_j`` is attention with the 256 feature rows of W as queries
  and the 1M keys and values (flash attention's forward with the roles turned);
- the read-out ``out_i = Σ_f φ_f(q_i) S_f / …`` is attention with the 1M queries and 256 "keys" (W's rows)
  carrying 256 "values" (S).

Each is split into C sequence chunks folded into the batch (as the Triton kernels split their
reductions), so that a single sequence fills the GPU. cuDNN's fused attention (FlashAttention-3 class on
Hopper) and FlashAttention-2 run both shapes forward and backward: 2 + 2 products forward, 5 + 5 backward,
14 products of 8.4M x 256 x 64 in all, against the Triton FAVOR+ pass's 13.5. Their time is what a
FlashAttention-3-class rewrite of the FAVOR+ kernels could hope for on this card, under the same power cap.
The Triton pass is timed in the same process, alternating, back to back for several seconds each.

Needs torch with CUDA only (the Triton kernels from ``src/``). Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
PRODUCT = 8 * (1 << 20) * 256 * 64 * 2  # one (8.4M x 256) x 64 product, FLOP


def timed_reps(fn, seconds: float) -> list[float]:
    """``fn`` issued back to back for about ``seconds``; per-call GPU times (ms) from CUDA events."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    reps = max(5, int(seconds / max(time.perf_counter() - t0, 1e-4)))
    events = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        events.append((s, e))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def summary(ms: list[float]) -> dict:
    n = len(ms)
    return {"reps": n, "first5_ms": statistics.median(ms[:5]), "median_ms": statistics.median(ms),
            "last_half_ms": statistics.median(ms[n // 2:]), "min_ms": min(ms)}


def attention_problem(chunks: int, lq: int, lk: int, heads: int, dim: int, backward: bool):
    """Random bf16 q (chunks, heads, lq, dim), k and v (chunks, heads, lk, dim); returns a closure."""
    q, k, v = (torch.randn(chunks, heads, n, dim, device="cuda", dtype=torch.bfloat16) for n in (lq, lk, lk))
    g = torch.randn(chunks, heads, lq, dim, device="cuda", dtype=torch.bfloat16)
    if backward:
        for x in (q, k, v):
            x.requires_grad_(True)

    def run() -> None:
        out = F.scaled_dot_product_attention(q, k, v)
        if backward:
            out.backward(g)
            q.grad = k.grad = v.grad = None

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=1 << 20)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--chunks", default="8,16,32,64,128")
    p.add_argument("--sweep-s", type=float, default=0.6)
    p.add_argument("--long-s", type=float, default=3.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    heads, dim, n, m = 8, 64, args.seq, args.features
    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "cudnn": torch.backends.cudnn.version(), "seq": n, "features": m, "heads": heads, "dim": dim,
                 "sweep": [], "long": []}
    print(res["device"], res["torch"], "cudnn", res["cudnn"], flush=True)

    # 1. Chunk sweep per backend and shape (forward + backward), short runs.
    best: dict = {}
    for backend, sdp in BACKENDS.items():
        for shape in ("state", "readout"):
            for c in (int(x) for x in args.chunks.split(",")):
                lq, lk = (m, n // c) if shape == "state" else (n // c, m)
                try:
                    with sdpa_kernel([sdp]):
                        run = attention_problem(c, lq, lk, heads, dim, True)
                        row = summary(timed_reps(run, args.sweep_s))
                except RuntimeError as err:  # a backend that refuses a shape says so
                    row = {"error": str(err).splitlines()[0][:200]}
                row.update(backend=backend, shape=shape, chunks=c)
                res["sweep"].append(row)
                print("sweep", json.dumps(row), flush=True)
                if "median_ms" in row and row["median_ms"] < best.get((backend, shape), (1e9, 0))[0]:
                    best[(backend, shape)] = (row["median_ms"], c)
                del run
                torch.cuda.empty_cache()

    # 2. The pass: state shape then read-out shape (forward + backward; and forward only), at each backend's
    #    best chunking, alternating with the Triton FAVOR+ pass, back to back for --long-s each.
    # The Triton pass as scripts/profile_triton_linear.py times it (that script puts src/ on the path).
    sys.path.insert(0, str(Path.cwd() / "scripts"))
    from profile_triton_linear import (
        PerformerAttention,
        feature_specs,
        forward_backward,
        fused,
        real_token_count,
    )

    shape = (1, heads, n, dim)
    q, k, v, g = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    spec = feature_specs(fused, PerformerAttention(dim, n, num_features=m).projection.cuda(), n)["favor"]
    count = real_token_count(None, n, torch.float32)

    def triton_fwd() -> None:
        with torch.no_grad():
            s, z = fused.fused_state(k, v, None, count, spec)
            fused.fused_readout(q, s, z, spec)

    passes = {"triton favor+": (forward_backward(spec, q, k, v, g, count), 13.5, triton_fwd)}
    for backend, sdp in BACKENDS.items():
        if (backend, "state") not in best or (backend, "readout") not in best:
            continue
        cs, cr = best[(backend, "state")][1], best[(backend, "readout")][1]
        with sdpa_kernel([sdp]):
            st_fb = attention_problem(cs, m, n // cs, heads, dim, True)
            ro_fb = attention_problem(cr, n // cr, m, heads, dim, True)
            st_f = attention_problem(cs, m, n // cs, heads, dim, False)
            ro_f = attention_problem(cr, n // cr, m, heads, dim, False)

        def pair(a, b, sdp=sdp):  # noqa: ANN001, ANN202
            def run() -> None:
                with sdpa_kernel([sdp]):
                    a()
                    b()
            return run

        passes[f"{backend} (state C={cs}, read-out C={cr})"] = (pair(st_fb, ro_fb), 14.0, pair(st_f, ro_f))

    for rnd in range(2):
        for name, (fb, fb_products, fwd) in passes.items():
            for mode, fn, products in (("fwd+bwd", fb, fb_products), ("fwd", fwd, 4.0)):
                time.sleep(2.0)  # the same start for each: the clock recovers between runs
                row = summary(timed_reps(fn, args.long_s))
                row.update(round=rnd, name=name, mode=mode, products=products,
                           tflops_last_half=products * PRODUCT / (row["last_half_ms"] * 1e-3) / 1e12)
                res["long"].append(row)
                print("long", json.dumps(row), flush=True)

    # 3. The exact-attention rate on this machine (the scale the README quotes): 64K tokens, fwd+bwd.
    for backend, sdp in BACKENDS.items():
        with sdpa_kernel([sdp]):
            run = attention_problem(1, 65536, 65536, heads, dim, True)
            row = summary(timed_reps(run, args.long_s))
        row.update(name=f"exact {backend} 64K", tflops_last_half=14 * heads * 65536 * 65536 * dim
                   / (row["last_half_ms"] * 1e-3) / 1e12)
        res["long"].append(row)
        print("long", json.dumps(row), flush=True)
        del run

    args.out.write_text(json.dumps(res, indent=1))
    print("\nsummary (ms: first 5 passes / last half of a run; TFLOP/s over the last half)")
    for row in res["long"]:
        print(f"  {row['name']:<44} {row.get('mode', 'fwd+bwd'):<8} {row['first5_ms']:8.3f} {row['last_half_ms']:8.3f}"
              f" {row['tflops_last_half']:6.0f}")


if __name__ == "__main__":
    main()
