"""The attention benchmark runs on CPU at small sizes and writes its table, metadata and plot."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from bench_attention import crossovers  # noqa: E402


def test_bench_attention_cpu_writes_csv_json_png(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_attention.py"), "--device", "cpu", "--lengths", "64,128",
         "--heads", "2", "--head-dim", "16", "--dtype", "fp32", "--target-s", "0.01", "--max-reps", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "bench_attention.csv")))
    mechanisms = {r["mechanism"] for r in rows}
    yamls = {p.stem for p in (ROOT / "conf" / "model" / "attention").glob("*.yaml")} - {"sdpa", "flash"}
    # kernels with an impl option run as <name>-<impl> (only -torch on CPU)
    assert all(y in mechanisms or f"{y}-torch" in mechanisms for y in yamls) and "sdpa-math" in mechanisms
    assert {r["backend_ran"] for r in rows if r["mechanism"].endswith("-torch")} == {"torch"}
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    assert all(float(r["median_ms"]) > 0 for r in rows)
    meta = json.loads((out / "bench_attention.json").read_text())["meta"]
    assert {"device", "torch", "settings", "crossover", "bandwidth_gb_s"} <= meta.keys()
    assert (out / "bench_attention.png").stat().st_size > 10_000


def test_crossover_is_the_length_from_which_a_method_stays_faster():
    def row(mech, n, ms):
        return {"mechanism": mech, "mode": "fwd", "seq_len": n, "median_ms": ms, "status": "ok"}

    rows = [row("sdpa-math", 1, 1.0), row("sdpa-math", 2, 4.0), row("sdpa-math", 4, 16.0),
            row("lin", 1, 2.0), row("lin", 2, 3.0), row("lin", 4, 5.0),
            row("flaky", 1, 0.5), row("flaky", 2, 5.0), row("flaky", 4, 6.0)]
    rows.append({"mechanism": "sdpa-math", "mode": "fwd", "seq_len": 8, "status": "oom"})
    rows.append(row("lin", 8, 9.0))
    assert crossovers(rows, "fwd") == {"flaky": 4, "lin": 2}


def test_cuda_graph_timing_without_a_gpu_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_attention.py"), "--device", "cpu", "--cuda-graph",
         "--lengths", "64", "--out", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "--cuda-graph needs --device cuda" in result.stderr.strip().splitlines()[-1]
