#!/usr/bin/env python
"""Summarise an ``nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,...,clocks_event_reasons.active,
utilization.gpu --format=csv -lms N`` log in half-second windows: median and lowest SM clock, mean power,
median utilisation, and how many samples had the software power cap (reason bit 0x4) active. Windows
with no utilisation are left out. Columns are found by their header names, so both runs' logs work.

    python smi_windows.py smi_log.csv
"""

from __future__ import annotations

import csv
import datetime as dt
import statistics as st
import sys


def main(path: str) -> None:
    with open(path) as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    head = rows[0]
    col = {name.split(" ")[0]: i for i, name in enumerate(head)}
    t_i, c_i, p_i = col["timestamp"], col["clocks.current.sm"], col["power.draw"]
    r_i, u_i = col["clocks_event_reasons.active"], col["utilization.gpu"]
    windows: dict[float, list] = {}
    t0 = None
    for r in rows[1:]:
        try:
            t = dt.datetime.strptime(r[t_i].strip(), "%Y/%m/%d %H:%M:%S.%f")
            sample = (int(r[c_i].split()[0]), float(r[p_i].split()[0]), int(r[u_i].split()[0]), int(r[r_i], 16))
        except (ValueError, IndexError):
            continue
        t0 = t0 or t
        windows.setdefault(int((t - t0).total_seconds() * 2) / 2, []).append(sample)
    for k, v in sorted(windows.items()):
        if max(s[2] for s in v) < 20:
            continue
        capped = sum(bool(s[3] & 0x4) for s in v)
        print(f"{k:6.1f} s  SM clock {st.median(s[0] for s in v):5.0f} MHz (lowest {min(s[0] for s in v)})  "
              f"power {st.mean(s[1] for s in v):4.0f} W  util {st.median(s[2] for s in v):3.0f}%  "
              f"power cap {capped}/{len(v)} samples")


if __name__ == "__main__":
    main(sys.argv[1])
