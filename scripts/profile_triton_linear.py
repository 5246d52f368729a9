#!/usr/bin/env python
"""Per-stage timings of the fused Triton linear-attention kernels at one length (CUDA).

Times the state forward, read-out forward, read-out backward, state backward and the whole forward +
backward of ``longseq.attention.triton_linear`` for FAVOR+ (``--features`` random features), elu+1
and cosFormer on random bf16 inputs ``(batch, heads, seq, head_dim)`` with ``triton.testing.do_bench``
(median after warm-up; the first call autotunes). Prints one line per feature map.

    python scripts/profile_triton_linear.py --seq 1048576
    python scripts/profile_triton_linear.py --seq 4096,16384   # short lengths: where launch cost shows

Besides ``do_bench``'s GPU-side medians it prints ``events``, the whole forward + backward timed with
CUDA events from the host's side as ``scripts/bench_attention.py`` does (includes any time the GPU waits
for the host), and ``host``, the CPU time to issue one forward + backward without synchronising.

``--timeline REPS`` traces REPS forward + backward passes issued back to back and prints each pass's
span, kernel-busy and idle time and each kernel's duration early and late in the run: whether time
goes between kernels (host, synchronisation) or into them, and whether it drifts as the GPU heats up
or reaches its power cap (log ``nvidia-smi --query-gpu=clocks.sm,power.draw,clocks_event_reasons.active
--format=csv -lms 20`` beside it)::

    python scripts/profile_triton_linear.py --maps favor --timeline 200

``--profiler-range`` then runs one more forward + backward per feature map between
``cudaProfilerStart``/``Stop``, so that Nsight Compute sees only tuned, warm kernels (the autotuner's
trial launches happen before)::

    ncu --profile-from-start off --clock-control none --section SpeedOfLight --section Occupancy \
        --section WarpStateStats --section MemoryWorkloadAnalysis \
        python scripts/profile_triton_linear.py --maps favor,cos --profiler-range
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from longseq.attention import triton_linear as fused  # noqa: E402
from longseq.attention.linear_core import real_token_count  # noqa: E402
from longseq.attention.performer import PerformerAttention  # noqa: E402

MAPS = ("favor", "elu", "cos")


def parse_maps(text: str) -> list[str]:
    """``--maps`` as a list, or a one-line error naming the unknown map and the choices."""
    maps = text.split(",")
    unknown = [m for m in maps if m not in MAPS]
    if unknown:
        raise SystemExit(f"error: unknown feature map {unknown[0]!r} in --maps: choose from {', '.join(MAPS)}")
    return maps


def feature_specs(module, projection: torch.Tensor, seq: int) -> dict:  # noqa: ANN001
    """The timed feature maps as ``module``'s FeatureSpecs (``module``: a kernel file, so that
    scripts/ab_triton_linear.py builds each version's own)."""
    return {
        "favor": module.FeatureSpec("favor", projection=projection, eps=1e-6),
        "elu": module.FeatureSpec("elu"),
        "cos": module.FeatureSpec("cos", horizon=seq),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", default=str(1 << 20), help="comma-separated lengths")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--maps", default="favor,elu,cos", help="comma-separated feature maps to time")
    p.add_argument("--host-breakdown", action="store_true", help="also time the host side of single calls")
    p.add_argument("--kernels", action="store_true", help="also list each GPU kernel's time (torch.profiler)")
    p.add_argument("--timeline", type=int, default=0, metavar="REPS",
                   help="also trace REPS back-to-back forward + backward passes (torch.profiler) and print each "
                        "pass's span, kernel-busy time and gaps, and each kernel's duration over the run")
    p.add_argument("--profiler-range", action="store_true",
                   help="then run one forward + backward per map between cudaProfilerStart/Stop (for ncu)")
    args = p.parse_args()
    maps = parse_maps(args.maps)
    if args.timeline < 0:
        raise SystemExit(f"error: --timeline {args.timeline}: give a number of passes to trace, 1 or more (0: no timeline)")
    if not torch.cuda.is_available():
        raise SystemExit("error: needs a CUDA GPU (the interpreter is for correctness tests, not timings)")

    for seq in (int(x) for x in args.seq.split(",")):
        shape = (args.batch, args.heads, seq, args.head_dim)
        q, k, v, g = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        projection = PerformerAttention(args.head_dim, seq, num_features=args.features).projection.cuda()
        specs = feature_specs(fused, projection, seq)
        count = real_token_count(None, seq, torch.float32)
        for x in (q, k, v):
            x.requires_grad_(True)
        if args.host_breakdown:
            host_breakdown(specs["elu"], q, k, v, count)
        for name in maps:
            spec = specs[name]
            times = stage_times(spec, q, k, v, g, count)
            print(f"seq {seq} {name}: " + ", ".join(f"{key} {ms:.3f} ms" for key, ms in times.items()), flush=True)
            if args.kernels:
                for kernel, ms in kernel_times(spec, q, k, v, g, count).items():
                    print(f"  {kernel:<48} {ms:8.3f} ms", flush=True)
            if args.timeline:
                print_timeline(name, timeline(spec, q, k, v, g, count, args.timeline))
        if args.profiler_range:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
            for name in maps:
                forward_backward(specs[name], q, k, v, g, count)()
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()


def forward_backward(spec, q, k, v, g, count) -> Callable[[], None]:  # noqa: ANN001
    """One fused forward + backward of ``spec`` (gradients dropped after, so passes do not accumulate)."""

    def full() -> None:
        s, z = fused.fused_state(k, v, None, count, spec)
        fused.fused_readout(q, s, z, spec).backward(g)
        q.grad = k.grad = v.grad = None

    return full


def profiled_passes(full: Callable[[], None], reps: int):  # noqa: ANN201
    """torch.profiler (CUDA activities) over ``reps`` calls of ``full`` issued back to back, after one
    untimed call."""
    from torch.profiler import ProfilerActivity, profile

    full()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            full()
        torch.cuda.synchronize()
    return prof


def stage_times(spec, q, k, v, g, count) -> dict[str, float]:  # noqa: ANN001
    """Median milliseconds of each stage and of the whole forward + backward for one feature map."""
    from triton.testing import do_bench

    s, z = fused.fused_state(k, v, None, count, spec)
    s_leaf, z_leaf = s.detach().requires_grad_(), z.detach().requires_grad_()
    out = fused.fused_readout(q, s_leaf, z_leaf, spec)
    ds, dz = torch.randn_like(s), torch.randn_like(z)
    full = forward_backward(spec, q, k, v, g, count)
    return {
        "state fwd": do_bench(lambda: fused._StateFn.apply(k.detach(), v.detach(), None, spec, None, 0, count)),
        "readout fwd": do_bench(
            lambda: fused._ReadoutFn.apply(q.detach(), s_leaf.detach(), z_leaf.detach(), spec, None, 0)
        ),
        "readout bwd": do_bench(lambda: torch.autograd.grad(out, (q, s_leaf, z_leaf), g, retain_graph=True)),
        "state bwd": do_bench(lambda: torch.autograd.grad((s, z), (k, v), (ds, dz), retain_graph=True)),
        "fwd+bwd": do_bench(full),
        **host_times(full),
    }


def kernel_times(spec, q, k, v, g, count, reps: int = 5) -> dict[str, float]:  # noqa: ANN001
    """Mean GPU milliseconds per forward + backward of each kernel that ran, from torch.profiler."""
    prof = profiled_passes(forward_backward(spec, q, k, v, g, count), reps)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        if device_us > 0:
            totals[event.key[:48]] = device_us / 1e3 / reps
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def timeline(spec, q, k, v, g, count, reps: int) -> list[list[tuple[str, float, float]]]:  # noqa: ANN001
    """``reps`` forward + backward passes issued back to back (the GPU never waits for the host once the
    first kernel runs) under torch.profiler: per pass, its GPU activities (kernels, memsets, copies) as
    (name, start µs, duration µs) in start order. Read from the exported Chrome trace, whose records
    are the profiler's raw per-launch timestamps."""
    import json
    import tempfile

    prof = profiled_passes(forward_backward(spec, q, k, v, g, count), reps)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.loads(Path(f.name).read_text())
    return split_passes(trace["traceEvents"], reps)


def split_passes(events: list[dict], reps: int) -> list[list[tuple[str, float, float]]]:
    """The GPU activities (kernels, memsets, copies) among Chrome-trace ``events`` as (name, start µs,
    duration µs) in start order, cut into ``reps`` passes of equal length (every pass issues the same
    work); a one-line error when they do not divide evenly."""
    gpu = sorted(
        ((e["name"], float(e["ts"]), float(e["dur"])) for e in events
         if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")),
        key=lambda a: a[1],
    )
    if not gpu or len(gpu) % reps:
        raise SystemExit(f"error: {len(gpu)} GPU activities in {reps} passes: passes differ, cannot split the trace")
    per = len(gpu) // reps
    return [gpu[i * per:(i + 1) * per] for i in range(reps)]


def print_timeline(name: str, passes: list[list[tuple[str, float, float]]]) -> None:
    """Span (first start to last end), busy (sum of durations) and idle time of each pass, the largest
    idle gap, and each kernel's duration in the first and last fifth of the run (a drift there, with
    the work unchanged, is the clock)."""
    import statistics

    spans, busys = [], []
    for acts in passes:
        span = acts[-1][1] + acts[-1][2] - acts[0][1]
        busy = sum(a[2] for a in acts)
        spans.append(span / 1e3)
        busys.append(busy / 1e3)
    gaps = [(b[1] - (a[1] + a[2]), a[0][:40], b[0][:40]) for acts in passes for a, b in zip(acts, acts[1:], strict=False)]
    worst = max(gaps)
    idle = statistics.median(s - b for s, b in zip(spans, busys, strict=True))
    print(f"timeline {name}: {len(passes)} passes of {len(passes[0])} GPU activities; span median "
          f"{statistics.median(spans):.3f} ms (min {min(spans):.3f}, max {max(spans):.3f}); busy median "
          f"{statistics.median(busys):.3f} ms; idle median {idle:.3f} ms; "
          f"largest gap {worst[0]:.1f} us ({worst[1]} -> {worst[2]})", flush=True)
    fifth = max(1, len(passes) // 5)
    for i, (kname, _, _) in enumerate(passes[0]):
        first = statistics.median(p[i][2] for p in passes[:fifth]) / 1e3
        last = statistics.median(p[i][2] for p in passes[-fifth:]) / 1e3
        print(f"  {kname[:48]:<48} first {fifth}: {first:7.3f} ms   last {fifth}: {last:7.3f} ms", flush=True)
    print("  per pass busy ms: " + " ".join(f"{b:.2f}" for b in busys), flush=True)


def host_breakdown(spec, q, k, v, count, reps: int = 200) -> None:  # noqa: ANN001
    """Mean host microseconds to issue pieces of the elu forward (no synchronisation)."""
    import time

    qd, kd, vd = q.detach(), k.detach(), v.detach()
    s, z, _ = fused._StateFn.apply(kd, vd, None, spec, None, 0, count)
    bh, m, d = s.shape[0] * s.shape[1], s.shape[2], s.shape[3]
    parts = (torch.empty(bh, 4, m, d, device="cuda"), torch.empty(bh, 4, m, device="cuda"), None, None)
    pieces = {
        "torch.empty": lambda: torch.empty(bh, m, d, device="cuda"),
        "torch add": lambda: s + s,
        "combine launch": lambda: fused._combine(parts, bh, s.shape[1], m, d, s.device),
        "state fwd (2 launches)": lambda: fused._StateFn.apply(kd, vd, None, spec, None, 0, count),
        "readout fwd (1 launch)": lambda: fused._ReadoutFn.apply(qd, s, z, spec, None, 0),
    }
    for name, fn in pieces.items():
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        us = (time.perf_counter() - t0) / reps * 1e6
        torch.cuda.synchronize()
        print(f"host {name}: {us:.1f} us", flush=True)


def host_times(fn, reps: int = 50) -> dict[str, float]:  # noqa: ANN001
    """``events``: median CUDA-event time of ``fn`` issued from an idle host (as the benchmark times it);
    ``host``: mean CPU time to issue ``fn`` without waiting for the GPU."""
    import statistics
    import time

    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t0) / reps * 1e3
    torch.cuda.synchronize()
    return {"events": statistics.median(times), "host": host}

if __name__ == "__main__":
    main()
