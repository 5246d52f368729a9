#!/usr/bin/env python
"""Collect train.py run folders into one results table (CSV, plus Parquet when pyarrow is installed).

Give run folders, multirun folders or glob patterns; every folder below them holding a summary.json is
one row (mechanism, length, seed, sizes, val/test bits per base, unigram baseline, tokens/s, memory,
backend, ...). See longseq.results for the columns.

    python scripts/collect_results.py results/dna_attention_sweep/runs \\
        -o results/dna_attention_sweep/results.csv
    python scripts/collect_results.py 'logs/dna_attention_sweep/multiruns/*' -o sweep.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from longseq.errors import UserError  # noqa: E402
from longseq.results import collect_runs, unfinished_runs, write_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run or multirun folders, or glob patterns (quote them)")
    p.add_argument("-o", "--out", required=True, help="output CSV, e.g. results/<sweep>/results.csv")
    p.add_argument("--no-parquet", action="store_true", help="write only the CSV even if pyarrow is installed")
    args = p.parse_args(argv)
    try:
        rows = collect_runs(args.paths)
        written = write_table(rows, args.out, parquet=not args.no_parquet)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(rows)} runs -> {', '.join(str(w) for w in written)}")
    skipped = unfinished_runs(args.paths)
    if skipped:
        print(f"note: {len(skipped)} run folder(s) without summary.json (crashed or still running) left out: "
              + ", ".join(str(s) for s in skipped), file=sys.stderr)
    for r in rows:
        bpb, uni, tps = r["val_bpb"], r["val_unigram_bpb"], r["tokens_per_s"]
        print(f"  {r['mechanism'] or '?':>12} len {r['seq_len'] or '?':>7}  val_bpb {_f(bpb)}  unigram {_f(uni)}  "
              f"tokens/s {_f(tps, '.0f')}  {r['run_dir']}")
    return 0


def _f(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
