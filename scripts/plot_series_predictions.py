"""Plot a trained per-sample regression run (e.g. ``task=ecg_to_resp``) on held-out windows.

Rebuilds the run's data module, model and task from ``<run>/.hydra/config.yaml``, loads the
checkpoint the run was evaluated with (``best_checkpoint`` in ``summary.json``, else ``last.ckpt``)
and draws, for a few test (or validation) windows, the input channel and the target beside the
prediction, with each window's Pearson correlation::

    python scripts/plot_series_predictions.py logs/sensors_ecg_to_resp/runs/<...> -o resp.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from longseq.results import load_trained_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder (holds .hydra/config.yaml and summary.json)")
    parser.add_argument("-o", "--out", type=Path, default=Path("series_predictions.png"))
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--windows", type=int, default=3, help="how many windows (evenly spaced over the split)")
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args()

    cfg, dm, task = load_trained_run(args.run)
    ds = dm.datasets[args.split]
    picks = np.linspace(0, len(ds) - 1, min(args.windows, len(ds))).round().astype(int)
    fig, axes = plt.subplots(len(picks), 1, figsize=(12, 2.6 * len(picks)), squeeze=False)
    rate = dm.rate
    for ax, i in zip(axes[:, 0], picks, strict=True):
        item = ds[int(i)]
        _, start, stop = ds.locate(int(i))
        with torch.no_grad():
            pred = task(item["values"][None], item["padding_mask"][None])[0, :, 0].numpy()
        real = item["sample_mask"].numpy()
        t = (start + np.arange(real.sum())) / rate
        x, y, p = item["values"][real, 0].numpy(), item["target"][real, 0].numpy(), pred[real]
        r = float(np.corrcoef(y, p)[0, 1])
        ax.plot(t, 0.25 * x - 3.0, lw=0.4, color="0.6", label=f"input: {dm.channel_names[0]} (scaled)")
        ax.plot(t, y, lw=1.0, color="C0", label=f"target: {dm.target_names[0]}")
        ax.plot(t, p, lw=1.0, color="C3", label=f"prediction (r = {r:.2f})")
        ax.set_xlim(t[0], t[-1])
        ax.set_ylabel("normalised")
        ax.legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("time in the recording (s)")
    fig.suptitle(f"{args.run.name}: {args.split} windows ({cfg.data.get('source') or cfg.data.get('path')})", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(args.out)


if __name__ == "__main__":
    main()
