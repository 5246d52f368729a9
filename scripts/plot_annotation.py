"""Figures of a finished ``task=annotate`` run: metrics beside the trivial baselines, and a label track.

    python scripts/plot_annotation.py logs/genomics/annotate_dmel -o results/genomics
    python scripts/plot_annotation.py <run> -o <dir> --no-track       # metrics only (no model needed)

Writes to the output folder:

* ``annotate_metrics.png`` from ``<run>/summary.json`` alone: per class and per evaluation group
  (held-out region of the training genome, then each cross-species genome), AUROC against the 0.5 of a
  constant score and AUPRC against the class's prevalence (what a constant score achieves there);
* ``annotate_track.png`` (unless ``--no-track``): the run rebuilt from ``<run>/.hydra/config.yaml``
  with the checkpoint it was evaluated with, on the held-out test windows richest in coding bases:
  the per-base class probabilities under the true labels, like a genome-browser track.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

GROUP_TITLES = {"test": "held-out region"}


def groups_and_classes(summary: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Evaluation groups (``test``, ``test_dsim``, ...) and class names found in an annotate summary."""
    groups, classes = [], []
    for key in summary:
        m = re.fullmatch(r"(test(?:_[A-Za-z0-9]+)?)_auroc_(.+)", key)
        if m is None or m.group(2) == "macro":
            continue
        if m.group(1) not in groups:
            groups.append(m.group(1))
        if m.group(2) not in classes:
            classes.append(m.group(2))
    if not groups:
        raise SystemExit("error: the summary has no test_*_auroc_<class> metrics: is it from a task=annotate run?")
    return groups, classes


def metrics_figure(summary: dict[str, Any], title: str = "") -> Figure:
    """Per-class AUROC and AUPRC per evaluation group beside the constant-score baselines."""
    groups, classes = groups_and_classes(summary)
    fig = Figure(figsize=(4.5 + 2.2 * len(groups), 6.2))
    axes = fig.subplots(2, 1, sharex=True)
    width = 0.8 / len(classes)
    for row, (metric, ax) in enumerate(zip(("auroc", "auprc"), axes, strict=True)):
        for c, name in enumerate(classes):
            xs = [g + (c - (len(classes) - 1) / 2) * width for g in range(len(groups))]
            vals = [summary.get(f"{g}_{metric}_{name}", float("nan")) for g in groups]
            ax.bar(xs, vals, width * 0.9, color=f"C{c}", label=name if row == 0 else None)
            if metric == "auprc":  # the baseline differs per class: a black tick on each bar
                base = [summary.get(f"{g}_baseline_auprc_{name}", float("nan")) for g in groups]
                ax.scatter(xs, base, marker="_", s=300, color="black", zorder=3,
                           label="prevalence (constant score)" if c == 0 else None)
        if metric == "auroc":
            ax.axhline(0.5, color="black", lw=1, ls="--", label="constant score (0.5)")
        for g, group in enumerate(groups):
            macro = summary.get(f"{group}_{metric}_macro")
            if macro is not None:
                ax.text(g, 1.02, f"macro {macro:.3f}", ha="center", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel(metric.upper())
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    labels = [GROUP_TITLES.get(g, g.removeprefix("test_")) for g in groups]
    axes[-1].set_xticks(range(len(groups)), labels)
    fig.suptitle(title or "per-base annotation: test metrics", fontsize=9)
    fig.tight_layout()
    return fig


def track_figure(run: Path, windows: int) -> Figure:
    """Per-base probabilities on the held-out test windows with the most coding bases."""
    import numpy as np
    import torch

    from longseq.results import load_trained_run

    _, dm, task = load_trained_run(run)
    ds = dm.datasets["test"].datasets[0]  # the held-out region of the training genome
    classes = list(dm.class_names)
    coding = classes.index("CDS") if "CDS" in classes else 0
    counts = [int((ds[i]["labels"] == coding).sum()) for i in range(len(ds))]
    picks = sorted(np.argsort(counts)[::-1][:windows].tolist())
    fig = Figure(figsize=(12, 2.4 * len(picks)))
    axes = fig.subplots(len(picks), 1, squeeze=False)[:, 0]
    for ax, i in zip(axes, picks, strict=True):
        item = ds[i]
        name, start, _ = ds.windows[i]
        n = int(item["padding_mask"].sum())
        with torch.no_grad():
            p = task.probabilities(item["tokens"][None], item["padding_mask"][None])[0, :n].numpy()
        x = start + np.arange(n)
        truth = item["labels"][:n].numpy()
        for c, cls in enumerate(classes):
            colour = f"C{sorted(classes).index(cls)}"  # the metrics figure's colours (classes sorted by name)
            ax.plot(x, p[:, c], lw=0.7, color=colour, label=f"P({cls})")
            ax.fill_between(x, -0.12, -0.02, where=truth == c, color=colour, step="mid", lw=0)
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(-0.15, 1.02)
        ax.set_ylabel("probability")
        ax.set_title(f"{name}:{start + 1:,}-{start + n:,} (true labels in the band below 0)", fontsize=8)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xlabel("position (bp)")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder of task=annotate (holds summary.json and .hydra/)")
    parser.add_argument("-o", "--out", type=Path, default=Path("."), help="output folder")
    parser.add_argument("--no-track", action="store_true", help="skip the label-track figure (needs the checkpoint)")
    parser.add_argument("--windows", type=int, default=2, help="how many test windows the track shows")
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args()
    path = args.run / "summary.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: pass the folder of a finished task=annotate run")
    summary = json.loads(path.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.run.name}: {summary.get('attention', '?')} attention, {summary.get('seq_len', '?')}-base windows"
    metrics_figure(summary, title).savefig(args.out / "annotate_metrics.png", dpi=args.dpi)
    print(args.out / "annotate_metrics.png")
    if not args.no_track:
        track_figure(args.run, args.windows).savefig(args.out / "annotate_track.png", dpi=args.dpi)
        print(args.out / "annotate_track.png")


if __name__ == "__main__":
    main()
