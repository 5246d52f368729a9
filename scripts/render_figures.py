#!/usr/bin/env python
"""Render the attention-comparison figures (the same as notebooks/attention_comparison.ipynb) to PNG.

    python scripts/render_figures.py                       # defaults below -> results/figures/*.png
    python scripts/render_figures.py --bench results/bench_attention_h100/bench_attention.csv \\
        --sweep results/dna_attention_sweep/results.csv --out results/figures
    python scripts/render_figures.py --sweep ''            # benchmark figures only

Writes time_vs_length.png and memory_vs_length.png from the kernel benchmark table
(scripts/bench_attention.py), quality_vs_length.png and quality_vs_throughput.png from a collected
sweep table (scripts/collect_results.py), and prints the crossover lengths and the sweep summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

from longseq.errors import UserError  # noqa: E402
from longseq.plots import crossover_table, format_table, load_bench, load_sweep, render_figures, summary_rows  # noqa: E402

DEFAULT_BENCH = "results/bench_attention_h100/bench_attention.csv"
DEFAULT_SWEEP = "results/dna_attention_sweep/results.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default=DEFAULT_BENCH, help="benchmark CSV ('' to skip; default: %(default)s)")
    p.add_argument("--sweep", default=DEFAULT_SWEEP, help="collected sweep CSV ('' to skip; default: %(default)s)")
    p.add_argument("--out", default="results/figures", help="output folder (default: %(default)s)")
    p.add_argument("--dpi", type=int, default=120)
    args = p.parse_args(argv)
    if not args.bench and not args.sweep:
        p.error("nothing to draw: give --bench and/or --sweep")
    try:
        written = render_figures(args.bench or None, args.sweep or None, args.out, dpi=args.dpi)
        if args.bench:
            print(f"crossover vs the fastest exact backend ({args.bench}):")
            print(format_table(crossover_table(load_bench(args.bench))))
        if args.sweep:
            print(f"\nsweep summary ({args.sweep}):")
            print(format_table(summary_rows(load_sweep(args.sweep))))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\nwrote " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
