#!/usr/bin/env python
"""One line per kernel from the text report of Nsight Compute (``ncu`` without ``--csv``).

Reads what ``ncu ... python scripts/profile_triton_linear.py --profiler-range`` printed (see that
script's docstring for the sections to ask for) and prints, per profiled kernel: duration, DRAM
throughput (% of peak), registers per thread, achieved occupancy, local-memory spill requests, issue
slots busy, the utilisation of the XU (exp, special functions), ALU, FMA, LSU and tensor pipes when
they were collected, and the warp stall reasons above ``--min-stall`` cycles per issued instruction.

    python scripts/ncu_summary.py ncu_report.txt [--all]   # --all: PyTorch's own kernels too
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HEADER = re.compile(r"^  (\S.*?) \((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\), Context")
STALL = re.compile(r"smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio\s+inst\s+([\d.]+)")
# (label, how the line starts once stripped, take the unit too)
FIELDS = (
    ("time", "Duration", True),
    ("dram%", "DRAM Throughput", False),
    ("regs", "Registers Per Thread", False),
    ("occ%", "Achieved Occupancy", False),
    ("spills", "Local Memory Spilling Requests ", False),
    ("issue%", "Issue Slots Busy", False),
    *((f"{p}%", f"sm__inst_executed_pipe_{p}.avg.pct_of_peak_sustained_active", False) for p in ("xu", "alu", "fma", "lsu")),
    ("tensor%", "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active", False),
)


def parse(text: str) -> list[dict[str, str]]:
    kernels: list[dict[str, str]] = []
    for line in text.splitlines():
        head = HEADER.match(line)
        if head:
            name, gx, gy, gz, bx, by, bz = head.groups()
            kernels.append({"kernel": name.split("(")[0].removeprefix("void ")[:44],
                            "grid": f"{gx}x{gy}x{gz}", "warps": str(int(bx) * int(by) * int(bz) // 32)})
            continue
        if not kernels:
            continue
        cur, stripped = kernels[-1], line.strip()
        for label, start, unit in FIELDS:
            if stripped.startswith(start) and label not in cur:
                words = stripped.split()
                cur[label] = f"{words[-1]} {words[-2]}" if unit else words[-1]
        stall = STALL.search(line)
        if stall:
            cur.setdefault("_stalls", []).append((stall.group(1), float(stall.group(2))))  # type: ignore[arg-type]
    return kernels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path)
    p.add_argument("--all", action="store_true", help="also PyTorch's kernels (default: Triton's only)")
    p.add_argument("--min-stall", type=float, default=0.5, help="stall reasons shown from this many cycles")
    args = p.parse_args()
    if not args.report.is_file():
        raise SystemExit(f"error: no ncu report at {args.report}; pass the text ncu printed (redirect its stdout)")
    kernels = parse(args.report.read_text(errors="replace"))
    if not kernels:
        raise SystemExit(f"error: no profiled kernels in {args.report}; was ncu run with --profile-from-start off "
                         f"and the script with --profiler-range?")
    for k in kernels:
        if not args.all and (k["kernel"].startswith("at::") or "<" in k["kernel"]):
            continue
        stalls = sorted(k.pop("_stalls", []), key=lambda s: -s[1])  # type: ignore[arg-type]
        shown = ", ".join(f"{name} {v:.2f}" for name, v in stalls if v >= args.min_stall and name != "selected")
        print(" ".join(f"{key}={val}" for key, val in k.items()) + (f" | stalls: {shown}" if shown else ""))


if __name__ == "__main__":
    main()
