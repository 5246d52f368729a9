#!/usr/bin/env python
"""Benchmark every attention kernel in conf/model/attention/ over sequence lengths.

For each mechanism (plus exact SDPA pinned to each of its backends) and each length, times the
forward pass and forward+backward on random inputs ``(batch, heads, seq, head_dim)``, records peak
memory, the SDPA backend that actually ran, TFLOP/s for exact attention (4·B·H·N²·d, x3.5 with the
backward) and, for linear kernels, the fraction of the memory-bandwidth floor (each of q, k, v, o
read/written once forward; q, k, v, o, dO read and dq, dk, dv written once backward).

Linear kernels with an ``impl`` option (performer, linear_elu, cosformer) run once per ``--impls``
entry, named ``<mechanism>-<impl>`` (``-triton``: the fused kernels of
``longseq.attention.triton_linear``; ``-torch``: the chunked PyTorch path); the ``backend_ran``
column records what actually ran. ``beyond_io_mib`` is the peak extra memory minus the tensors every
implementation must hold (the output, and with the backward the gradients of q, k, v).

``--cuda-graph`` times replays of each call captured in a CUDA graph: the GPU's work without the
host's cost of issuing it, which dominates short lengths (peak memory is not measured then).

A method that runs out of memory or past ``--budget-s`` at one length is recorded as such and not
run at longer lengths. Writes ``<out>/bench_attention.csv``, ``.json`` (device, versions,
settings, crossover lengths) and ``.png``.

    python scripts/bench_attention.py --device cpu --lengths 256,1024,4096          # CPU, seconds
    python scripts/bench_attention.py --device cuda --out results/bench_h100        # GPU, 1K..1M
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from longseq.plots import crossovers  # noqa: E402  (one rule for the script, the notebook and the figures)

EXACT_BACKENDS = ("flash", "cudnn", "efficient", "math")
RERUN_CAP_S = 5.0  # a warmed call longer than this is measured once, not repeated
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def kernel_configs(names: list[str] | None, device: str, impls: list[str] | None = None) -> dict[str, dict]:
    """Name -> attention config: every YAML in conf/model/attention, plus `sdpa-<backend>` variants and
    `<name>-<impl>` variants of the kernels with an ``impl`` option."""
    configs: dict[str, dict] = {}
    for path in sorted((ROOT / "conf" / "model" / "attention").glob("*.yaml")):
        cfg = OmegaConf.to_container(OmegaConf.merge({"seed": 0}, {"a": OmegaConf.load(path)}), resolve=True)["a"]
        if path.stem == "sdpa":
            for backend in EXACT_BACKENDS if device == "cuda" else ("math",):
                configs[f"sdpa-{backend}"] = {**cfg, "backend": backend}
            configs["sdpa-auto"] = cfg
        elif "impl" in cfg and impls:
            for impl in impls:
                configs[f"{path.stem}-{impl}"] = {**cfg, "impl": impl}
        elif path.stem != "flash":  # flash == sdpa-flash
            configs[path.stem] = cfg
    if names:
        unknown = set(names) - set(configs)
        if unknown:
            raise SystemExit(f"error: unknown mechanism(s) {sorted(unknown)}; choose from {sorted(configs)}")
        configs = {k: v for k, v in configs.items() if k in names}
    return configs


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device: str, target_s: float, max_reps: int, warm: bool = False) -> tuple[float, int]:
    """Median seconds of ``fn``; repetitions fill about ``target_s``.

    The first call is a warm-up (compilation, autotuning, allocator growth) unless ``warm`` says the
    same code already ran at a shorter length and the call is long (exact attention near 1M tokens
    takes many seconds): then that first call is the measurement itself.
    """
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    if first > target_s:
        if warm and first > RERUN_CAP_S:
            return first, 1
        sync(device)  # one more call: the first may have included compilation for this shape
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0, 1
    reps = max(1, min(max_reps, int(target_s / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), reps


def memory_bandwidth(device: str) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (bytes read + written)."""
    n = (1 << 28) if device == "cuda" else (1 << 25)
    src = torch.randn(n // 4, device=device)
    dst = torch.empty_like(src)
    t, _ = time_call(lambda: dst.copy_(src), device, 0.2, 50)
    return 2 * src.numel() * src.element_size() / t


def run_one(name: str, cfg: dict, n: int, mode: str, args, device: str, warm: bool) -> dict:
    dtype = DTYPES[args.dtype]
    b, h, d = args.batch, args.heads, args.head_dim
    # Compiled kernels (flex_attention in `hybrid`) recompile for every new length; past dynamo's
    # recompile limit they would silently fall back to eager code that materialises seq x seq.
    torch._dynamo.reset()
    kernel = instantiate(cfg)(head_dim=d, max_seq_len=max(n, args.max_seq_len or 0)).to(device)
    kernel.train(mode == "fwdbwd")
    gen = torch.Generator(device=device).manual_seed(n)
    q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype, generator=gen) for _ in range(3))
    do = torch.randn(b, h, n, d, device=device, dtype=dtype, generator=gen)
    for t in (q, k, v):
        t.requires_grad_(mode == "fwdbwd")
    # Learned projections (Linformer) hold parameters: run them in the benchmark dtype as well.
    kernel.to(dtype=dtype) if any(p.is_floating_point() for p in kernel.parameters()) else None

    def fwd() -> None:
        with torch.no_grad():
            kernel(q, k, v)

    def fwdbwd() -> None:
        out = kernel(q, k, v)
        torch.autograd.grad(out, (q, k, v), do)

    fn = fwd if mode == "fwd" else fwdbwd
    if not getattr(kernel, "exact", False) or args.cuda_graph:
        # Untimed: the fused Triton kernels autotune (and may compile) on their first call at each
        # length, and a first call that long would otherwise be taken as the measurement.
        fn()
        sync(device)
    if args.cuda_graph:
        fn = graphed(fn)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    seconds, reps = time_call(fn, device, args.target_s, args.max_reps, warm)
    # A graph allocates once, at capture: its replays show no peak to measure.
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" and not args.cuda_graph else float("nan")
    row = {
        "mechanism": name, "mode": mode, "seq_len": n, "batch": b, "heads": h, "head_dim": d, "dtype": args.dtype,
        "median_ms": seconds * 1e3, "reps": reps, "peak_extra_mib": peak,
        "backend_ran": backends_ran(kernel), "status": "ok",
    }
    elem = torch.finfo(dtype).bits // 8
    tensor_bytes = b * h * n * d * elem
    if getattr(kernel, "exact", False):
        flops = 4 * b * h * n * n * d * (3.5 if mode == "fwdbwd" else 1.0)
        row["tflops"] = flops / seconds / 1e12
    else:
        moved = tensor_bytes * (4 if mode == "fwd" else 4 + 8)  # fwd: q,k,v,o; bwd: q,k,v,o,dO,dq,dk,dv
        row["floor_ms"] = moved / args.bandwidth * 1e3
        row["floor_fraction"] = row["floor_ms"] / row["median_ms"]
    if device == "cuda" and not args.cuda_graph:
        row["beyond_io_mib"] = peak - tensor_bytes * (1 if mode == "fwd" else 4) / 2**20
    return row


def graphed(fn):  # noqa: ANN001, ANN201
    """``fn`` captured once in a CUDA graph; the returned callable replays it. Timing replays measures
    the GPU's work without the host's cost of issuing it (Python, autograd, kernel launches), which at
    short lengths is most of an eager step; a model step can get the same with CUDA graphs
    (``torch.cuda.graphs``, torch.compile's reduce-overhead mode)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # capture needs one warm run on a side stream first
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def backends_ran(kernel: torch.nn.Module) -> str:
    """``last_backend`` of the kernel and its nested kernels (hybrid's global heads), or ``-``."""
    names = sorted({m.last_backend for m in kernel.modules() if hasattr(m, "last_backend")})
    return ",".join(names) if names else "-"


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ["fwd", "fwdbwd"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for ax, mode in zip(axes[:2], modes, strict=True):
        for mech in sorted({r["mechanism"] for r in rows}):
            pts = sorted((r["seq_len"], r["median_ms"]) for r in rows if r["mechanism"] == mech and r["mode"] == mode and r["status"] == "ok")
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ls="--" if mech.startswith("sdpa") else "-", label=mech)
        for _mech, n in meta["crossover"].get(mode, {}).items():
            if n:
                ax.axvline(n, color="grey", lw=0.5, alpha=0.4)
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="median time (ms)", title=f"{mode} time")
        ax.grid(True, which="both", alpha=0.3)
    for mech in sorted({r["mechanism"] for r in rows}):
        pts = sorted((r["seq_len"], r["peak_extra_mib"]) for r in rows if r["mechanism"] == mech and r["mode"] == "fwdbwd" and r["status"] == "ok")
        if pts and not all(math.isnan(p[1]) for p in pts):
            axes[2].plot(*zip(*pts, strict=True), marker="o", ls="--" if mech.startswith("sdpa") else "-", label=mech)
    axes[2].set(xscale="log", yscale="log", xlabel="sequence length", ylabel="peak extra memory (MiB)", title="fwd+bwd memory")
    axes[2].grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    s = meta["settings"]
    fig.suptitle(f"{meta['device']} | batch {s['batch']}, heads {s['heads']}, head_dim {s['head_dim']}, {s['dtype']} | torch {meta['torch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--mechanisms", default="", help="comma list (default: all YAMLs + every SDPA backend)")
    p.add_argument("--lengths", default="", help="comma list (default GPU 1K..1M, CPU 256..8K)")
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--max-seq-len", type=int, default=0, help="max_seq_len given to kernels (default: each length)")
    p.add_argument("--budget-s", type=float, default=15.0, help="skip longer lengths once one call takes longer")
    p.add_argument("--target-s", type=float, default=1.0, help="time spent on repetitions per point")
    p.add_argument("--max-reps", type=int, default=50)
    p.add_argument("--impls", default="", help="comma list of impl variants for linear kernels "
                   "(default: triton,torch on CUDA, torch on CPU)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="time replays of each call captured in a CUDA graph (GPU work without host launch cost)")
    p.add_argument("--out", default="results/bench_attention_cpu")
    p.add_argument("--from-json", nargs="+", default=[], metavar="JSON",
                   help="measure nothing: merge the rows of earlier runs' bench_attention.json (later files "
                   "replace the same mechanism/mode/length), recompute crossovers and write CSV/JSON/PNG")
    args = p.parse_args()
    if args.from_json:
        merge_runs([Path(f) for f in args.from_json], Path(args.out))
        return
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible; use --device cpu")
    if args.cuda_graph and device != "cuda":
        raise SystemExit("error: --cuda-graph needs --device cuda (CUDA graphs are a GPU feature)")
    if args.dtype == "bf16" and device == "cpu":
        pass  # bf16 matmuls run on CPU, slowly; fine for small sizes
    default_lengths = [2**i for i in range(10, 21)] if device == "cuda" else [256, 512, 1024, 2048, 4096, 8192]
    lengths = [int(x) for x in args.lengths.split(",") if x] or default_lengths
    modes = [m for m in args.modes.split(",") if m]
    impls = [i for i in args.impls.split(",") if i] or (["triton", "torch"] if device == "cuda" else ["torch"])
    configs = kernel_configs([m for m in args.mechanisms.split(",") if m], device, impls)
    args.bandwidth = memory_bandwidth(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name, cfg in configs.items():
        for mode in modes:
            stopped = None
            for n in lengths:
                if stopped:
                    rows.append({"mechanism": name, "mode": mode, "seq_len": n, "status": f"skipped ({stopped})"})
                    continue
                try:
                    row = run_one(name, cfg, n, mode, args, device, warm=n != lengths[0])
                except torch.cuda.OutOfMemoryError:
                    row, stopped = {"mechanism": name, "mode": mode, "seq_len": n, "status": "oom"}, "oom"
                except Exception as exc:  # noqa: BLE001 - record and go on with the other methods
                    msg = str(exc).splitlines()[0][:120]
                    row, stopped = {"mechanism": name, "mode": mode, "seq_len": n, "status": f"error: {msg}"}, "error"
                if device == "cuda":
                    torch.cuda.empty_cache()
                if row["status"] == "ok" and row["median_ms"] / 1e3 > args.budget_s:
                    stopped = "over budget"
                rows.append(row)
                extra = f"{row.get('tflops', 0):.0f} TFLOP/s" if "tflops" in row else f"{row.get('floor_fraction', 0):.2f} of floor" if "floor_fraction" in row else ""
                print(f"{name:>16} {mode:>6} {n:>8}  {row['status']:<10} {row.get('median_ms', float('nan')):10.3f} ms "
                      f"{row.get('peak_extra_mib', float('nan')):9.0f} MiB  {row.get('backend_ran', '')} {extra}", flush=True)
    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "bandwidth_gb_s": args.bandwidth / 1e9,
        "settings": {k: v for k, v in vars(args).items() if k != "bandwidth"},
        "crossover": {mode: crossovers(rows, mode) for mode in modes},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_outputs(rows, meta, out)


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    with open(out / "bench_attention.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / "bench_attention.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, meta, out / "bench_attention.png")
    print(json.dumps(meta["crossover"], indent=1))
    print(f"wrote {out}/bench_attention.csv, .json, .png")


def merge_runs(paths: list[Path], out: Path) -> None:
    """Rows of several runs on the same device and settings as one table (see ``--from-json``)."""
    merged: dict[tuple, dict] = {}
    metas = []
    for path in paths:
        run = json.loads(path.read_text())
        metas.append(run["meta"])
        for row in run["rows"]:
            merged[(row["mechanism"], row["mode"], row["seq_len"])] = row
    devices = {m["device"] for m in metas}
    if len(devices) != 1:
        raise SystemExit(f"error: runs from different devices cannot be merged: {sorted(devices)}")
    rows = list(merged.values())
    modes = sorted({r["mode"] for r in rows})
    meta = {**metas[-1], "crossover": {mode: crossovers(rows, mode) for mode in modes},
            "merged_from": [{"time": m["time"], "settings": m["settings"]} for m in metas]}
    write_outputs(rows, meta, out)


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
