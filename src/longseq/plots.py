"""Figures comparing linear attention with exact attention (notebook and ``scripts/render_figures.py``).

Two inputs:

* the kernel benchmark table of ``scripts/bench_attention.py`` (``bench_attention.csv``: one row per
  mechanism x mode x length, with ``median_ms``, ``peak_extra_mib`` and a ``status``), and
* the training-sweep table of ``scripts/collect_results.py`` (one row per run, see
  :mod:`longseq.results`).

Every figure function returns a :class:`matplotlib.figure.Figure` built without pyplot, so this works
under any backend (Agg included), leaks no global figure state, and displays in a notebook as the
cell's value. Matplotlib is the only plotting dependency.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from longseq.errors import UserError
from longseq.results import read_table

MODES = ("fwd", "fwdbwd")
MODE_TITLES = {"fwd": "forward", "fwdbwd": "forward + backward"}
# One colour per mechanism in every figure; exact SDPA backends get dashed grey-ish lines.
_LINEAR_ORDER = ("performer", "linformer", "linear_elu", "cosformer", "hybrid")
_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_EXACT_COLOURS = {"sdpa": "black", "flash": "dimgray", "sdpa-auto": "black", "sdpa-cudnn": "dimgray",
                  "sdpa-flash": "gray", "sdpa-efficient": "darkgray", "sdpa-math": "silver"}
_LENGTH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def is_exact(mechanism: str) -> bool:
    """True for exact softmax attention (``sdpa``, ``flash`` and the benchmark's ``sdpa-<backend>``)."""
    return mechanism in ("sdpa", "flash") or mechanism.startswith("sdpa-")


def colour(mechanism: str) -> str:
    """The colour of ``mechanism`` in every figure."""
    if is_exact(mechanism):
        return _EXACT_COLOURS.get(mechanism, "gray")
    base = mechanism.rsplit("-", 1)[0]  # the benchmark's `<mechanism>-<impl>` variants share a colour
    if base in _LINEAR_ORDER:
        return _PALETTE[_LINEAR_ORDER.index(base)]
    return _PALETTE[len(_LINEAR_ORDER) + sum(map(ord, mechanism)) % (len(_PALETTE) - len(_LINEAR_ORDER))]


def linestyle(mechanism: str) -> str:
    """Dashed for exact attention, dotted for a kernel's plain-PyTorch variant (``<name>-torch``), else solid."""
    if is_exact(mechanism):
        return "--"
    return ":" if mechanism.endswith("-torch") else "-"


def _float(cell: str | None) -> float:
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


def load_bench(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``bench_attention.csv``, numbers typed (missing numbers are NaN)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such benchmark table (make one with scripts/bench_attention.py)")
    rows = []
    with open(p, newline="") as fh:
        for r in csv.DictReader(fh):
            if not r.get("mechanism") or not r.get("seq_len"):
                continue
            rows.append({
                **r,
                "seq_len": int(r["seq_len"]),
                "median_ms": _float(r.get("median_ms")),
                "peak_extra_mib": _float(r.get("peak_extra_mib")),
                "reps": int(_float(r.get("reps"))) if r.get("reps") else 0,
                "status": r.get("status") or "",
            })
    if not rows:
        raise UserError(f"{p}: no benchmark rows")
    return rows


def bench_device(path: str | os.PathLike[str]) -> str | None:
    """Device name from the ``bench_attention.json`` written beside the CSV, if there is one."""
    meta_path = Path(path).with_suffix(".json")
    try:
        return json.loads(meta_path.read_text())["meta"]["device"]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _ok(rows: Sequence[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("mode") == mode and r["status"] == "ok" and not math.isnan(r["median_ms"])]


def fastest_exact(rows: Sequence[dict[str, Any]], mode: str) -> dict[int, tuple[float, str]]:
    """Length -> (time in ms, backend) of the fastest exact backend that ran at that length."""
    best: dict[int, tuple[float, str]] = {}
    for r in _ok(rows, mode):
        if is_exact(r["mechanism"]) and (r["seq_len"] not in best or r["median_ms"] < best[r["seq_len"]][0]):
            best[r["seq_len"]] = (r["median_ms"], r["mechanism"])
    return best


def crossovers(rows: Sequence[dict[str, Any]], mode: str) -> dict[str, int | None]:
    """Per linear mechanism, the shortest length from which it beats the fastest exact backend.

    "Beats" must hold at that length and at every longer length the mechanism was run at; where
    every exact backend failed (out of memory) but the mechanism ran, it counts as faster, and where
    the mechanism failed it is not. ``None``: never (for good) faster in the lengths measured.
    """
    exact = fastest_exact(rows, mode)
    lengths = sorted({r["seq_len"] for r in rows if r.get("mode") == mode})
    out: dict[str, int | None] = {}
    for mech in sorted({r["mechanism"] for r in rows if r.get("mode") == mode and not is_exact(r["mechanism"])}):
        mine = {r["seq_len"]: r["median_ms"] for r in _ok(rows, mode) if r["mechanism"] == mech}
        tried = {r["seq_len"] for r in rows if r.get("mode") == mode and r["mechanism"] == mech}
        cross: int | None = None
        for n in lengths:
            if n not in tried or (n not in mine and n not in exact):
                continue  # nothing to compare at this length
            faster = n in mine and mine[n] < exact.get(n, (math.inf, ""))[0]
            if faster and cross is None:
                cross = n
            elif not faster:
                cross = None
        out[mech] = cross
    return out


def crossover_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per linear mechanism: crossover length per mode and speed-up at the longest common length."""
    table = []
    per_mode = {mode: crossovers(rows, mode) for mode in MODES}
    for mech in sorted(set().union(*per_mode.values())):
        row: dict[str, Any] = {"mechanism": mech}
        for mode in MODES:
            row[f"crossover_{mode}"] = per_mode[mode].get(mech)
            exact = fastest_exact(rows, mode)
            mine = {r["seq_len"]: r["median_ms"] for r in _ok(rows, mode) if r["mechanism"] == mech}
            common = sorted(set(mine) & set(exact))
            row[f"speedup_{mode}"] = exact[common[-1]][0] / mine[common[-1]] if common else None
            row[f"speedup_{mode}_at"] = common[-1] if common else None
        table.append(row)
    return table


def _log_axes(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="major", alpha=0.3)


def _mark_failures(ax: Axes, rows: Sequence[dict[str, Any]], mode: str, mech: str) -> None:
    """An x at the top of the axes where ``mech`` first ran out of memory or failed."""
    failed = sorted(r["seq_len"] for r in rows if r.get("mode") == mode and r["mechanism"] == mech
                    and r["status"] != "ok" and not r["status"].startswith("skipped"))
    if failed:
        ax.plot([failed[0]], [0.97], marker="x", ms=8, color=colour(mech), transform=ax.get_xaxis_transform(),
                clip_on=False, ls="none")


def time_figure(rows: Sequence[dict[str, Any]], device: str | None = None) -> Figure:
    """Median time vs length (log-log), forward and forward+backward, with each crossover marked.

    The thick grey line is the fastest exact backend at each length; a ringed point marks where a
    linear mechanism becomes (and stays) faster than it; an x at the top, where a method failed (OOM).
    """
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, mode in zip(axes, MODES, strict=True):
        exact = fastest_exact(rows, mode)
        if exact:
            xs = sorted(exact)
            ax.plot(xs, [exact[n][0] for n in xs], color="lightgray", lw=6, alpha=0.7, zorder=0, label="fastest exact")
        cross = crossovers(rows, mode)
        for mech in sorted({r["mechanism"] for r in rows if r.get("mode") == mode}, key=lambda m: (not is_exact(m), m)):
            pts = sorted((r["seq_len"], r["median_ms"]) for r in _ok(rows, mode) if r["mechanism"] == mech)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, ls=linestyle(mech), color=colour(mech), label=mech)
            _mark_failures(ax, rows, mode, mech)
            n = cross.get(mech)
            if n is not None:
                y = dict(pts)[n]
                ax.plot([n], [y], marker="o", ms=14, mfc="none", mew=2, color=colour(mech), ls="none")
                ax.annotate(f"{n // 1024}K" if n >= 1024 else str(n), (n, y), xytext=(6, -12),
                            textcoords="offset points", fontsize=8, color=colour(mech))
        _log_axes(ax, "sequence length (tokens)", "median time (ms)", f"{MODE_TITLES[mode]} time")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Attention kernel time vs length; rings: crossover vs the fastest exact backend"
                 + (f" ({device})" if device else ""))
    return fig


def memory_figure(rows: Sequence[dict[str, Any]], device: str | None = None) -> Figure:
    """Peak extra memory vs length (log-log), forward and forward+backward (GPU benchmarks only)."""
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, mode in zip(axes, MODES, strict=True):
        drawn = False
        for mech in sorted({r["mechanism"] for r in rows if r.get("mode") == mode}, key=lambda m: (not is_exact(m), m)):
            pts = sorted((r["seq_len"], r["peak_extra_mib"]) for r in _ok(rows, mode)
                         if r["mechanism"] == mech and not math.isnan(r["peak_extra_mib"]))
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, ls=linestyle(mech), color=colour(mech), label=mech)
                drawn = True
            _mark_failures(ax, rows, mode, mech)
        if drawn:
            _log_axes(ax, "sequence length (tokens)", "peak extra memory (MiB)", f"{MODE_TITLES[mode]} memory")
            ax.legend(fontsize=7, ncol=2)
        else:
            ax.text(0.5, 0.5, "no memory figures (CPU benchmark)", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    fig.suptitle("Attention kernel memory vs length; x: out of memory" + (f" ({device})" if device else ""))
    return fig


def load_sweep(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a collected sweep table (``scripts/collect_results.py``), numbers typed."""
    rows = read_table(path)
    if not rows:
        raise UserError(f"{path}: the results table has no runs")
    return rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _by_mechanism_length(rows: Sequence[dict[str, Any]], key: str) -> dict[str, dict[int, list[float]]]:
    """mechanism -> seq_len -> values of ``key`` over seeds/repeats (missing values dropped)."""
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        v = r.get(key)
        if r.get("mechanism") and r.get("seq_len") and v is not None and not math.isnan(v):
            out[r["mechanism"]][r["seq_len"]].append(v)
    return out


def _sweep_devices(rows: Sequence[dict[str, Any]]) -> str:
    devices = sorted({str(r.get("device")) for r in rows if r.get("device")})
    return ", ".join(devices)


def _with_gain(rows: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows with ``gain`` = unigram bits/base - ``metric`` (bits per base saved over the unigram model)."""
    out = []
    for r in rows:
        v, u = r.get(metric), r.get("val_unigram_bpb")
        gain = u - v if v is not None and u is not None else None
        out.append({**r, "gain": gain})
    return out


def _errorbar_lines(ax: Axes, data: dict[str, dict[int, list[float]]]) -> None:
    """One line per mechanism over lengths: mean of its runs, bar spanning their min..max."""
    for mech in sorted(data, key=lambda m: (not is_exact(m), m)):
        xs = sorted(data[mech])
        ys = [_mean(data[mech][n]) for n in xs]
        lo = [y - min(data[mech][n]) for y, n in zip(ys, xs, strict=True)]
        hi = [max(data[mech][n]) - y for y, n in zip(ys, xs, strict=True)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, color=colour(mech),
                    ls=linestyle(mech), label=mech)


def _length_axis(ax: Axes, lengths: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("window length (bases)")
    ax.grid(True, alpha=0.3)


def _zero_line(ax: Axes, lw: float, label: str | None = None) -> None:
    """The unigram baseline (gain 0), without stretching the axis when the data sit far above it."""
    ax.autoscale_view()
    low, high = ax.get_ylim()
    far = low > 0 and (high - low) < 0.5 * low
    ax.axhline(0.0, color="black", ls=":", lw=lw, label=(f"{label} (0, below the axis)" if far else label) if label else None)
    if far:
        ax.set_ylim(low, high)


def quality_figure(rows: Sequence[dict[str, Any]], metric: str = "val_bpb") -> Figure:
    """Validation bits per base vs window length per mechanism, with the unigram baseline.

    Left: bits per base and the unigram (base-frequency) baseline on the same masked positions.
    Right: the same runs as bits per base saved over that baseline (zoomed; higher is better).
    Several runs of one mechanism and length (seeds) are averaged; the bar spans their min..max.
    """
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax, ax_gain = fig.subplots(1, 2)
    data = _by_mechanism_length(rows, metric)
    _errorbar_lines(ax, data)
    per_len: dict[int, list[float]] = defaultdict(list)
    for lengths in _by_mechanism_length(rows, "val_unigram_bpb").values():
        for n, vals in lengths.items():
            per_len[n].extend(vals)
    if per_len:
        xs = sorted(per_len)
        ax.plot(xs, [_mean(per_len[n]) for n in xs], color="black", ls=":", lw=2, marker="_", ms=14,
                label="unigram baseline")
    lengths = sorted({n for per in data.values() for n in per} | set(per_len))
    _length_axis(ax, lengths)
    ax.set(ylabel=f"{metric.replace('_', ' ')} (bits per base, lower is better)", title="bits per base")
    ax.legend(fontsize=8)
    _errorbar_lines(ax_gain, _by_mechanism_length(_with_gain(rows, metric), "gain"))
    _zero_line(ax_gain, lw=2)
    _length_axis(ax_gain, lengths)
    ax_gain.set(ylabel="bits per base saved over unigram (higher is better)", title="gain over the unigram baseline")
    fig.suptitle(f"Masked-LM validation quality vs length ({_sweep_devices(rows)})")
    return fig


def quality_throughput_figure(rows: Sequence[dict[str, Any]], metric: str = "val_bpb") -> Figure:
    """Quality vs training throughput: bits per base saved over the unigram baseline vs tokens/s.

    The gain is taken against the unigram baseline of the run's own length, so lengths compare
    fairly; colour is the mechanism, marker the length.
    """
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    lengths = sorted({r["seq_len"] for r in rows if r.get("seq_len")})
    marker = {n: _LENGTH_MARKERS[i % len(_LENGTH_MARKERS)] for i, n in enumerate(lengths)}
    seen_mech: set[str] = set()
    for r in sorted(_with_gain(rows, metric), key=lambda r: (r.get("mechanism") or "", r.get("seq_len") or 0)):
        x, y, mech, n = r.get("tokens_per_s"), r.get("gain"), r.get("mechanism"), r.get("seq_len")
        if x is None or y is None or not mech or not n or math.isnan(x) or math.isnan(y):
            continue
        ax.scatter([x], [y], marker=marker[n], s=60, color=colour(mech), edgecolors="black", linewidths=0.5,
                   label=mech if mech not in seen_mech else None, zorder=3)
        seen_mech.add(mech)
    for n in lengths:
        ax.scatter([], [], marker=marker[n], color="white", edgecolors="black", label=f"len {n}")
    _zero_line(ax, lw=1, label="unigram baseline")
    ax.set_xscale("log")
    ax.set(xlabel="training throughput (tokens/s)",
           ylabel=f"{metric.replace('_', ' ')}: bits per base saved over unigram (higher is better)",
           title=f"Quality vs throughput ({_sweep_devices(rows)})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mechanism x length means: val bpb, unigram bpb, gain over unigram, tokens/s, runs.

    Peak memory is left out: train.py's monitor reports a per-process peak (CPU max RSS, CUDA
    allocator peak), which in a multirun carries over from one job to the next.
    """
    out = []
    keys = ("val_bpb", "val_unigram_bpb", "tokens_per_s")
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("mechanism") and r.get("seq_len"):
            groups[(r["mechanism"], r["seq_len"])].append(r)
    for (mech, n), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], not is_exact(kv[0][0]), kv[0][0])):
        row: dict[str, Any] = {"mechanism": mech, "seq_len": n, "runs": len(runs)}
        for k in keys:
            vals = [r[k] for r in runs if r.get(k) is not None and not math.isnan(r[k])]
            row[k] = _mean(vals) if vals else None
        bpb, uni = row["val_bpb"], row["val_unigram_bpb"]
        row["gain_vs_unigram"] = uni - bpb if bpb is not None and uni is not None else None
        out.append(row)
    return out


def format_table(rows: Sequence[dict[str, Any]], floats: str = ".4g") -> str:
    """A plain-text, aligned table of ``rows`` (for notebooks and terminals)."""
    if not rows:
        return "(empty)"
    cols = list(rows[0])

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else format(v, floats)
        return str(v)

    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


FIGURES = ("time_vs_length", "memory_vs_length", "quality_vs_length", "quality_vs_throughput")


def render_figures(bench_csv: str | os.PathLike[str] | None, sweep_csv: str | os.PathLike[str] | None,
                   out_dir: str | os.PathLike[str], dpi: int = 120) -> list[Path]:
    """Write the PNG figures for whichever of the two tables is given; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Figure] = {}
    if bench_csv:
        bench = load_bench(bench_csv)
        device = bench_device(bench_csv)
        figures["time_vs_length"] = time_figure(bench, device)
        figures["memory_vs_length"] = memory_figure(bench, device)
    if sweep_csv:
        sweep = load_sweep(sweep_csv)
        figures["quality_vs_length"] = quality_figure(sweep)
        figures["quality_vs_throughput"] = quality_throughput_figure(sweep)
    written = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        written.append(path)
    return written
