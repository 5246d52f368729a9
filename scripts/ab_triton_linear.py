#!/usr/bin/env python
"""A/B two versions of the fused kernels on one GPU, in one process: per-stage times and agreement.

Loads ``OLD`` (a copy of ``src/longseq/attention/triton_linear.py`` from another revision, e.g.
``git show REV:src/longseq/attention/triton_linear.py > /tmp/old.py``) next to the tree's module and,
for each feature map, prints both versions' stage times (``profile_triton_linear.stage_times``:
do_bench medians, CUDA-event and host figures) on the same random inputs, then the largest relative
difference of the output and the q/k/v gradients between them.

    python scripts/ab_triton_linear.py /tmp/old.py --maps cos,favor [--seq 1048576] [--candidates]

``--candidates`` also prints every autotuning candidate's time for the tree's kernels (the tuner keeps
the fastest), which tells a slower kernel from a worse pick.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

import profile_triton_linear as prof  # noqa: E402

from longseq.attention import triton_linear as new  # noqa: E402
from longseq.attention.linear_core import real_token_count  # noqa: E402
from longseq.attention.performer import PerformerAttention  # noqa: E402


def load(path: Path, name: str):  # noqa: ANN201
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def print_candidates() -> None:
    """Every candidate's time the tree's tuner measured (``_Tuned.trials``), fastest first."""
    for tuned in (obj for obj in vars(new).values() if isinstance(obj, new._Tuned)):
        for key, timings in tuned.trials.items():
            for cfg, ms in sorted(timings.items(), key=lambda kv: kv[1]):
                print(f"  cand {tuned.fn.__name__} N={key[0]} {dict(key[1:])} {cfg.kwargs} "
                      f"w{cfg.num_warps} st{cfg.num_stages}: {ms:.3f} ms", flush=True)
        tuned.trials.clear()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path, help="the other revision's triton_linear.py")
    p.add_argument("--maps", default="favor,elu,cos", help="comma-separated feature maps")
    p.add_argument("--seq", type=int, default=1 << 20)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--candidates", action="store_true", help="print every tuned candidate's time (tree's kernels)")
    args = p.parse_args()
    maps = prof.parse_maps(args.maps)
    if not args.old.is_file():
        raise SystemExit(f"error: no kernel file at {args.old}; write one with "
                         f"git show REV:src/longseq/attention/triton_linear.py > {args.old}")
    if not torch.cuda.is_available():
        raise SystemExit("error: needs a CUDA GPU (the interpreter is for correctness tests, not timings)")
    modules = {"old": load(args.old, "triton_linear_old"), "new": new}
    torch.manual_seed(0)
    shape, dtype = (1, 8, args.seq, 64), getattr(torch, args.dtype)
    q, k, v, g = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    projection = PerformerAttention(64, args.seq, num_features=256).projection.cuda()
    count = real_token_count(None, args.seq, torch.float32)
    for name in maps:
        results = {}
        for label, module in modules.items():
            spec = prof.feature_specs(module, projection, args.seq)[name]
            prof.fused = module  # stage_times calls the module it is given here
            s, z = module.fused_state(k, v, None, count, spec)
            out = module.fused_readout(q, s, z, spec)
            results[label] = (out.detach(), *torch.autograd.grad(out, (q, k, v), g))
            times = prof.stage_times(spec, q, k, v, g, count)
            if args.candidates and label == "new":
                print_candidates()
            print(f"{label} {name}: " + ", ".join(f"{key} {ms:.3f}" for key, ms in times.items()), flush=True)
        diffs = [float((a.float() - b.float()).abs().max() / b.float().abs().max())
                 for a, b in zip(results["old"], results["new"], strict=True)]
        print(f"{name} new vs old rel diff (out, dq, dk, dv): " + ", ".join(f"{d:.2e}" for d in diffs), flush=True)
    prof.fused = new


if __name__ == "__main__":
    main()
