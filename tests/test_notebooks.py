"""The analysis notebook runs on small fixture tables, and scripts/render_figures.py writes the same figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import ASSETS, ROOT
from nbclient import NotebookClient

from longseq import plots

sys.path.insert(0, str(ROOT / "scripts"))
import render_figures  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "attention_comparison.ipynb"
BENCH_SMALL = ASSETS / "results" / "bench_small.csv"
SWEEP_SMALL = ASSETS / "results" / "sweep_small.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "clear the notebook's outputs before committing"


def test_notebook_runs_on_fixture_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSEQ_BENCH_CSV", str(BENCH_SMALL))
    monkeypatch.setenv("LONGSEQ_SWEEP_CSV", str(SWEEP_SMALL))
    monkeypatch.setenv("LONGSEQ_FUSED_CSV", str(BENCH_SMALL))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel must be this virtual environment's interpreter (jupyter_client maps the `python3`
    # kernelspec's "python" to sys.executable); a last cell reports which one ran.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})]
    assert len(images) == 5, "time, memory, fused-kernel time, quality and quality-vs-throughput figures"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "crossover_fwd" in text and "gain_vs_unigram" in text and "fused benchmark:" in text
    assert Path(nb.cells[-1].outputs[0]["text"].strip()) == Path(sys.executable)


def test_render_figures_writes_pngs(tmp_path, capsys):
    out = tmp_path / "figures"
    code = render_figures.main(["--bench", str(BENCH_SMALL), "--sweep", str(SWEEP_SMALL), "--out", str(out), "--dpi", "50"])
    assert code == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(f"{n}.png" for n in plots.FIGURES)
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert "crossover" in capsys.readouterr().out


def test_render_figures_missing_table_is_a_one_line_error(tmp_path, capsys):
    assert render_figures.main(["--bench", str(tmp_path / "none.csv"), "--sweep", "", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_crossovers_match_the_benchmark_script():
    """Independent re-computation agrees with the crossover lengths bench_attention.py stored."""
    csv_path = ROOT / "results" / "bench_attention_h100" / "bench_attention.csv"
    if not csv_path.is_file():
        pytest.skip("no committed H100 benchmark")
    rows = plots.load_bench(csv_path)
    meta = json.loads(csv_path.with_suffix(".json").read_text())["meta"]
    for mode in plots.MODES:
        assert plots.crossovers(rows, mode) == meta["crossover"][mode]


def test_crossover_rules():
    def row(mech: str, n: int, ms: float | None) -> dict:
        return {"mechanism": mech, "mode": "fwd", "seq_len": n, "median_ms": ms if ms is not None else float("nan"),
                "peak_extra_mib": float("nan"), "reps": 1, "status": "ok" if ms is not None else "oom"}

    rows = [row("sdpa-flash", 1, 1.0), row("sdpa-flash", 2, 4.0), row("sdpa-flash", 4, 16.0), row("sdpa-flash", 8, None),
            row("lin", 1, 3.0), row("lin", 2, 3.0), row("lin", 4, 5.0), row("lin", 8, 9.0),  # faster from 2 on
            row("flaky", 1, 0.5), row("flaky", 2, 5.0), row("flaky", 4, 10.0), row("flaky", 8, 20.0),  # 1, lost at 2, back at 4
            row("dies", 1, 2.0), row("dies", 2, 2.0), row("dies", 4, 2.0), row("dies", 8, None)]  # fails where exact fails
    assert plots.crossovers(rows, "fwd") == {"lin": 2, "flaky": 4, "dies": 2}
    assert plots.crossovers(rows, "fwdbwd") == {}


@pytest.mark.parametrize("name", ["time_figure", "memory_figure"])
def test_figures_cope_with_cpu_benchmarks_without_memory(name):
    rows = [r | {"peak_extra_mib": float("nan")} for r in plots.load_bench(BENCH_SMALL)]
    fig = getattr(plots, name)(rows)
    assert fig.axes


def test_env_paths_are_honoured():
    source = "".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells)
    assert "LONGSEQ_BENCH_CSV" in source and "LONGSEQ_SWEEP_CSV" in source
