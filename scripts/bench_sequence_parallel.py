"""Masked-LM training steps on one sequence of millions of tokens, whole on one device or split over
several (sequence parallelism): step time, tokens/s and peak memory per device, one CSV row per length.

The model is the project's DNA encoder (``longseq.models.dna.DNAEncoder``: default width 128, 4 layers,
4 heads, rotary positions) with a linear kernel and a 4-way masked-LM head; the loss is the sum of
the shard's cross-entropies over the global count of masked bases, and the shards' gradients are
summed over the group (as ``task=mlm`` does under ``trainer=ddp model.sequence_parallel=N``). The
tokens are random bases (seeded): this measures memory and speed, not what the model learns.

    # one device (a length that does not fit is reported as OOM)
    python scripts/bench_sequence_parallel.py --lengths 4194304 8388608 16777216 --out one.csv
    # split over 2 GPUs
    torchrun --standalone --nproc-per-node 2 scripts/bench_sequence_parallel.py --lengths 16777216 --out sp.csv
    # CPU check with gloo processes
    torchrun --standalone --nproc-per-node 2 scripts/bench_sequence_parallel.py --device cpu --lengths 4096 --steps 2

Under torchrun every rank must be able to run each length (an OOM on one rank would leave the others
waiting in a collective until the process-group timeout, ``--timeout`` seconds).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from longseq.attention import sequence_parallel as sp_mod  # noqa: E402
from longseq.models.dna import DNAEncoder  # noqa: E402

KERNELS = {
    "linear_elu": "longseq.attention.linear_elu.LinearEluAttention",
    "performer": "longseq.attention.performer.PerformerAttention",
    "cosformer": "longseq.attention.cosformer.CosformerAttention",
}
MASK_TOKEN = 6


def kernel_factory(name: str, impl: str, chunk_size: int):
    module, cls = KERNELS[name].rsplit(".", 1)
    kernel_cls = getattr(__import__(module, fromlist=[cls]), cls)
    kwargs = {"chunk_size": chunk_size}
    if "impl" in kernel_cls.__init__.__code__.co_varnames:
        kwargs["impl"] = impl
    return functools.partial(kernel_cls, **kwargs)


def one_length(args: argparse.Namespace, n: int, sp: sp_mod.SequenceParallel | None, device: torch.device) -> dict:
    world = sp.size if sp is not None else 1
    torch.manual_seed(0)
    model = DNAEncoder(
        7, n, kernel_factory(args.attention, args.impl, args.chunk_size), d_model=args.d_model, n_layers=args.layers,
        n_heads=args.heads, checkpoint_layers=args.checkpoint_layers, sequence_parallel=world,
    ).to(device)
    head = torch.nn.Linear(args.d_model, 4).to(device)
    sp_mod.enable(model, sp)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 4, (1, n), generator=g)
    chosen = torch.rand(1, n, generator=g) < 0.15
    inputs = torch.where(chosen, torch.full_like(tokens, MASK_TOKEN), tokens)
    if sp is not None:
        tokens, chosen, inputs = (sp.shard(t) for t in (tokens, chosen, inputs))
    tokens, chosen, inputs = tokens.to(device), chosen.to(device), inputs.to(device)
    n_masked = float(chosen.sum()) if sp is None else float(sp.all_reduce_sum(chosen.sum().double()))

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, loss_value = [], float("nan")
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = head(model(inputs))
        loss = F.cross_entropy(logits[chosen].float(), tokens[chosen], reduction="sum") / n_masked
        loss.backward()
        if sp is not None:  # the group's ranks hold one sequence: sum their gradients, in one buffer
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat, group=sp.group)
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        loss_value = float(loss.detach()) if sp is None else float(sp.all_reduce_sum(loss.detach()))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    step_time = sorted(times)[len(times) // 2]
    return {"status": "ok", "step_time_s": step_time, "tokens_per_s": n / step_time, "peak_mem_gib": peak, "loss": loss_value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4_194_304])
    ap.add_argument("--attention", choices=sorted(KERNELS), default="linear_elu")
    ap.add_argument("--impl", default="torch", help="kernel implementation where the kernel has one (torch|triton|auto)")
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--checkpoint-layers", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--timeout", type=int, default=180)
    ap.add_argument("--out", type=Path, default=None, help="CSV to append rows to (rank 0)")
    args = ap.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    sp = None
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout), device_id=device if device.type == "cuda" else None)
        sp = sp_mod.new_groups(world)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"

    for n in args.lengths:
        base = {
            "device": name, "devices": world, "seq_len": n, "tokens_per_device": n // world, "attention": args.attention,
            "impl": args.impl, "d_model": args.d_model, "layers": args.layers, "heads": args.heads,
            "checkpoint_layers": args.checkpoint_layers, "torch": torch.__version__,
        }
        try:
            result = one_length(args, n, sp, device)
        except torch.OutOfMemoryError as exc:
            if world > 1:  # the other ranks may wait in a collective: no way to go on together
                raise
            result = {"status": "OOM", "step_time_s": "", "tokens_per_s": "", "peak_mem_gib": "", "loss": "",
                      "error": str(exc).splitlines()[0][:160]}
            torch.cuda.empty_cache()
        if sp is not None and result["status"] == "ok" and device.type == "cuda":
            peak = torch.tensor(result["peak_mem_gib"], device=device)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
            result["peak_mem_gib"] = float(peak)  # the largest of the devices
        row = {**base, "error": "", **result}
        if rank == 0:
            print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
            if args.out is not None:  # row by row: a later failure keeps the rows before it
                new = not args.out.exists()
                with open(args.out, "a", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=list(row))
                    if new:
                        w.writeheader()
                    w.writerow(row)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
