"""Revision 23: rev23_sdpa.json (from sdpa_favor_shapes.py) as a CSV table and a bar plot.

    python tabulate.py ../rev23_sdpa.json ../rev23_sdpa.csv ../rev23_sdpa.png
"""

from __future__ import annotations

import csv
import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PRODUCT = 8 * (1 << 20) * 256 * 64 * 2


def main(src: str, csv_path: str, png_path: str) -> None:
    res = json.loads(open(src).read())
    rows = []
    for r in res["long"]:
        if "round" not in r:
            continue
        rows.append({"implementation": r["name"], "mode": r["mode"], "round": r["round"], "products": r["products"],
                     "first5_ms": round(r["first5_ms"], 3), "last_half_ms": round(r["last_half_ms"], 3),
                     "tflops_last_half": round(r["tflops_last_half"], 1)})
    for r in res["sweep"]:
        if "median_ms" in r:
            rows.append({"implementation": f"{r['backend']} {r['shape']} shape C={r['chunks']}", "mode": "fwd+bwd",
                         "round": "sweep", "products": 7.0, "first5_ms": round(r["first5_ms"], 3),
                         "last_half_ms": round(r["last_half_ms"], 3),
                         "tflops_last_half": round(7 * PRODUCT / (r["last_half_ms"] * 1e-3) / 1e12, 1)})
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    names = list(dict.fromkeys(r["implementation"] for r in rows if r["round"] != "sweep"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, mode in zip(axes, ("fwd+bwd", "fwd"), strict=True):
        for i, name in enumerate(names):
            sel = [r for r in rows if r["implementation"] == name and r["mode"] == mode]
            first = statistics.median(r["first5_ms"] for r in sel)
            last = statistics.median(r["last_half_ms"] for r in sel)
            ax.bar(i - 0.2, first, 0.4, color="tab:blue", label="first 5 passes" if i == 0 else None)
            ax.bar(i + 0.2, last, 0.4, color="tab:orange", label="last half of 3 s" if i == 0 else None)
            ax.text(i + 0.2, last, f"{last:.1f}", ha="center", va="bottom", fontsize=8)
        if mode == "fwd+bwd":
            ax.axhline(10.0, color="k", ls="--", lw=1, label="issue 8 target (10 ms)")
        ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
        ax.set_ylabel("ms per pass")
        ax.set_title(f"FAVOR+ work at 1M tokens, {mode}")
        ax.legend(fontsize=8)
    fig.suptitle(f"{res['device']}, torch {res['torch']}, cuDNN {res['cudnn']}: Triton FAVOR+ vs SDPA on its two shapes",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:4])
