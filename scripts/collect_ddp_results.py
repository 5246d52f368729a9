"""Collect the multi-GPU runs of a results folder into ``results.csv`` and ``scaling.png``.

Reads ``dp_1gpu_summary.json`` and ``dp_2gpu_summary.json`` (``train.py`` run summaries: data
parallel, same global batch) and, when present, ``sp_bench.csv`` (``scripts/bench_sequence_parallel.py``
rows). Writes one CSV (one row per run, with the scaling efficiency of the data-parallel run against
``devices x`` the one-GPU throughput) and a two-panel figure.

    python scripts/collect_ddp_results.py results/ddp_h200
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    folder: Path = args.folder

    rows = []
    summaries = {n: json.loads((folder / f"dp_{n}gpu_summary.json").read_text()) for n in (1, 2) if (folder / f"dp_{n}gpu_summary.json").exists()}
    base = summaries.get(1, {}).get("tokens_per_s")
    for n, s in sorted(summaries.items()):
        rows.append({
            "kind": "data_parallel", "device": s["device"], "devices": s["world_size"], "attention": s["attention"],
            "backend": s["attention_backend"], "seq_len": s["seq_len"], "global_batch_size": s["global_batch_size"],
            "grad_accumulation": s["grad_accumulation"], "steps": s["steps"], "tokens_per_s": round(s["tokens_per_s"]),
            "scaling_efficiency": round(s["tokens_per_s"] / (n * base), 4) if base else "",
            "peak_mem_gib": round(s["peak_mem_mib"] / 1024, 3), "val_bpb": round(s["val_bpb"], 4), "status": "ok",
        })
    bench = folder / "sp_bench.csv"
    sp_rows = list(csv.DictReader(open(bench))) if bench.exists() else []
    for r in sp_rows:
        rows.append({
            "kind": "sequence_parallel_bench" if int(r["devices"]) > 1 else "one_device_bench", "device": r["device"],
            "devices": r["devices"], "attention": r["attention"], "backend": r["impl"], "seq_len": r["seq_len"],
            "global_batch_size": 1, "grad_accumulation": 1, "steps": "",
            "tokens_per_s": round(float(r["tokens_per_s"])) if r["tokens_per_s"] else "", "scaling_efficiency": "",
            "peak_mem_gib": round(float(r["peak_mem_gib"]), 2) if r["peak_mem_gib"] else "", "val_bpb": "",
            "status": r["status"],
        })
    with open(folder / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if sp_rows else 1, figsize=(11 if sp_rows else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    dp = [r for r in rows if r["kind"] == "data_parallel"]
    ax.bar([f"{r['devices']} GPU" for r in dp], [r["tokens_per_s"] / 1e3 for r in dp], color=["#888", "#2a7"])
    if base:
        ax.hlines(2 * base / 1e3, 0.6, 1.4, colors="k", linestyles="--", lw=1, label="2 x one GPU (linear scaling)")
        ax.legend(loc="upper left")
    for i, r in enumerate(dp):
        label = f"{r['tokens_per_s'] / 1e3:,.0f}k" + (f"\n{100 * r['scaling_efficiency']:.1f}%" if r["devices"] > 1 else "")
        ax.text(i, r["tokens_per_s"] / 1e3, label, ha="center", va="bottom")
    ax.set_ylabel("training tokens/s (thousands)")
    ax.set_title(f"DDP, default model ({dp[0]['attention']}, {dp[0]['seq_len']} bases)\n{dp[0]['device']}" if dp else "DDP")
    ax.set_ylim(0, max((r["tokens_per_s"] for r in dp), default=1) / 1e3 * 1.35)
    if sp_rows:
        ax = axes[0][1]
        for devices, marker in (("1", "o"), ("2", "s")):
            pts = [(int(r["seq_len"]) / 2**20, r) for r in sp_rows if r["devices"] == devices]
            ok = [(x, float(r["peak_mem_gib"])) for x, r in pts if r["status"] == "ok"]
            oom = [x for x, r in pts if r["status"] != "ok"]
            label = "1 GPU, whole sequence" if devices == "1" else "2 GPUs, sequence parallel (per GPU)"
            if ok:
                ax.plot([p[0] for p in ok], [p[1] for p in ok], marker=marker, label=label)
            for x in oom:
                ax.plot([x], [143771 / 1024], "rx", ms=10)
                ax.annotate("OOM", (x, 143771 / 1024), textcoords="offset points", xytext=(4, -12), color="r")
        ax.axhline(143771 / 1024, color="gray", ls=":", lw=1)
        ax.set_ylim(0, 160)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (Mi tokens)")
        ax.set_ylabel("peak GPU memory (GiB)")
        ax.set_title(f"one training step, {sp_rows[0]['attention']}, width {sp_rows[0]['d_model']}, {sp_rows[0]['layers']} layers")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "scaling.png", dpi=120)
    print(f"wrote {folder / 'results.csv'} and {folder / 'scaling.png'}")


if __name__ == "__main__":
    main()
