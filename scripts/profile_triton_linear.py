#!/usr/bin/env python
"""Per-stage timings of the fused Triton linear-attention kernels at one length (CUDA).

Times the state forward, read-out forward, read-out backward, state backward and the whole forward +
backward of ``longseq.attention.triton_linear`` for FAVOR+ (``--features`` random features), elu+1
and cosFormer on random bf16 inputs ``(batch, heads, seq, head_dim)`` with ``triton.testing.do_bench``
(median after warm-up; the first call autotunes). Prints one line per feature map.

    python scripts/profile_triton_linear.py --seq 1048576
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from longseq.attention import triton_linear as fused  # noqa: E402
from longseq.attention.linear_core import real_token_count  # noqa: E402
from longseq.attention.performer import PerformerAttention  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=1 << 20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--features", type=int, default=256)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: needs a CUDA GPU (the interpreter is for correctness tests, not timings)")

    shape = (args.batch, args.heads, args.seq, args.head_dim)
    q, k, v, g = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    projection = PerformerAttention(args.head_dim, args.seq, num_features=args.features).projection.cuda()
    specs = {
        "favor": fused.FeatureSpec("favor", projection=projection, eps=1e-6),
        "elu": fused.FeatureSpec("elu"),
        "cos": fused.FeatureSpec("cos", horizon=args.seq),
    }
    count = real_token_count(None, args.seq, torch.float32)
    for x in (q, k, v):
        x.requires_grad_(True)
    for name, spec in specs.items():
        times = stage_times(spec, q, k, v, g, count)
        print(f"{name}: " + ", ".join(f"{key} {ms:.2f} ms" for key, ms in times.items()), flush=True)


def stage_times(spec, q, k, v, g, count) -> dict[str, float]:  # noqa: ANN001
    """Median milliseconds of each stage and of the whole forward + backward for one feature map."""
    from triton.testing import do_bench

    s, z = fused.fused_state(k, v, None, count, spec)
    s_leaf, z_leaf = s.detach().requires_grad_(), z.detach().requires_grad_()
    out = fused.fused_readout(q, s_leaf, z_leaf, spec)
    ds, dz = torch.randn_like(s), torch.randn_like(z)

    def full() -> None:
        s, z = fused.fused_state(k, v, None, count, spec)
        fused.fused_readout(q, s, z, spec).backward(g)
        q.grad = k.grad = v.grad = None

    return {
        "state fwd": do_bench(lambda: fused._StateFn.apply(k.detach(), v.detach(), None, spec, None, 0)),
        "readout fwd": do_bench(
            lambda: fused._ReadoutFn.apply(q.detach(), s_leaf.detach(), z_leaf.detach(), spec, None, 0)
        ),
        "readout bwd": do_bench(lambda: torch.autograd.grad(out, (q, s_leaf, z_leaf), g, retain_graph=True)),
        "state bwd": do_bench(lambda: torch.autograd.grad((s, z), (k, v), (ds, dz), retain_graph=True)),
        "fwd+bwd": do_bench(full),
    }

if __name__ == "__main__":
    main()
