"""Collect finished training runs into one tidy table (one row per run).

A run folder is what ``python train.py`` writes (see README): ``summary.json``, ``.hydra/config.yaml``,
``.hydra/overrides.yaml``, ``.hydra/hydra.yaml`` and ``csv/metrics.csv``. Only ``summary.json`` is
required; the rest fill in settings (seed, sizes) and the best validation score when present, so a run
logged without the CSV logger, or composed in-process without ``.hydra/``, still gets a row.

    rows = collect_runs(["results/dna_attention_sweep/runs"])
    write_table(rows, "results/dna_attention_sweep/results.csv")   # + .parquet when pyarrow is installed

Pure Python (csv, json, OmegaConf for YAML); no pandas needed. Mistakes the user can fix (a missing
folder, a glob that matches nothing, a malformed file) raise :class:`longseq.errors.UserError`.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from longseq.errors import UserError

# Table columns, in order. `val_bpb` is summary.json's value: the best checkpoint re-validated after
# training (what the run reports); `best_val_bpb` is the minimum over every validation logged in
# csv/metrics.csv. `params_m` is millions of parameters (summary.json's `params` when present, else
# the "model: X.XXM parameters" line of train.log, i.e. two decimals).
COLUMNS: tuple[str, ...] = (
    "run_dir",
    "mechanism",
    "seq_len",
    "seed",
    "batch_size",
    "d_model",
    "n_layers",
    "n_heads",
    "steps",
    "val_bpb",
    "best_val_bpb",
    "val_unigram_bpb",
    "val_acc",
    "val_loss",
    "test_bpb",
    "test_unigram_bpb",
    "tokens_per_s",
    "step_time_s",
    "peak_mem_mib",
    "attention_backend",
    "device",
    "params_m",
    "task_name",
    "attention_class",
    "overrides",
)

FLOAT_COLUMNS = frozenset(
    {"val_bpb", "best_val_bpb", "val_unigram_bpb", "val_acc", "val_loss", "test_bpb", "test_unigram_bpb",
     "tokens_per_s", "step_time_s", "peak_mem_mib", "params_m"}
)
INT_COLUMNS = frozenset({"seq_len", "seed", "batch_size", "d_model", "n_layers", "n_heads", "steps"})

# Attention class -> conf/model/attention choice, for run folders without .hydra/hydra.yaml.
_CLASS_TO_CHOICE = {
    "SDPAttention": "sdpa",
    "PerformerAttention": "performer",
    "LinformerAttention": "linformer",
    "LinearEluAttention": "linear_elu",
    "CosformerAttention": "cosformer",
    "HybridAttention": "hybrid",
}
_PARAMS_LINE = re.compile(r"model: ([0-9.]+)M parameters")


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every folder holding a ``summary.json`` at or below ``paths`` (folders, files or glob patterns).

    A folder named explicitly must hold at least one run; a glob pattern must match at least one run
    in all, and its other matches (an unfinished job, ``multirun.yaml``) are passed over. Raises
    :class:`UserError` for a path that does not exist or is unreadable and for the cases above.
    """
    found: dict[Path, None] = {}  # insertion-ordered set, de-duplicates overlapping arguments
    for arg in paths:
        text = os.fspath(arg)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            summaries = [s for m in matches for s in _summaries_under(Path(m), strict=False)]
            if not summaries:
                raise UserError(f"{text}: the pattern matches no finished run (no summary.json)")
        else:
            summaries = _summaries_under(Path(text), strict=True)
        for summary in summaries:
            found[summary.parent.resolve()] = None
    return list(found)


def _summaries_under(path: Path, strict: bool) -> list[Path]:
    """The ``summary.json`` files at or below ``path``; ``strict``: none is an error."""
    if not path.exists():
        raise UserError(f"{path}: no such run or multirun folder")
    if path.is_file():
        if path.name == "summary.json":
            return [path]
        if strict:
            raise UserError(f"{path}: expected a run folder or its summary.json")
        return []
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"{path}: folder is not readable")
    try:
        summaries = sorted(path.rglob("summary.json"))
    except OSError as exc:
        raise UserError(f"{path}: cannot search for runs ({exc})") from exc
    if strict and not summaries:
        raise UserError(f"{path}: no summary.json found (not a finished train.py run or multirun folder)")
    return summaries


def unfinished_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run folders (holding ``.hydra/``) at or below ``paths`` without a ``summary.json``: crashed or running."""
    out: dict[Path, None] = {}
    for arg in paths:
        text = os.fspath(arg)
        for match in sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]:
            path = Path(match)
            if not path.is_dir():
                continue
            for hydra_dir in sorted(path.rglob(".hydra")):
                run = hydra_dir.parent
                if hydra_dir.is_dir() and not (run / "summary.json").is_file():
                    out[run.resolve()] = None
    return list(out)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _read_yaml(path: Path) -> Any | None:
    """The YAML at ``path`` as an OmegaConf node, or None when the file is absent."""
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - yaml and OmegaConf raise many types; all mean "malformed"
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc


def _select(cfg: DictConfig | None, key: str) -> Any | None:
    """``cfg[key]`` (dotted), resolved if possible; None when absent or unresolvable outside Hydra."""
    if cfg is None:
        return None
    try:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} with no Hydra app running
        return None
    if isinstance(value, str) and "${" in value:
        return None
    return value


def load_trained_run(run_dir: str | os.PathLike[str], stage: str = "test") -> tuple[DictConfig, Any, Any]:
    """``(config, data module, task)`` of a finished run, rebuilt from ``<run>/.hydra/config.yaml``.

    The data module is set up for ``stage``; the task holds the checkpoint the run was evaluated with
    (``best_checkpoint`` of ``summary.json``, else ``checkpoints/last.ckpt``) and is in eval mode.
    For scripts that plot a run's predictions.
    """
    import hydra
    import torch

    run = Path(run_dir)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    summary = _read_json(run / "summary.json") if (run / "summary.json").is_file() else {}
    ckpt = Path(summary.get("best_checkpoint") or run / "checkpoints" / "last.ckpt")
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.setup(stage)
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    task = hydra.utils.instantiate(cfg.task, model=model, _convert_="all")
    task.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    task.eval()
    return cfg, datamodule, task


def best_metric(metrics_csv: str | os.PathLike[str], key: str = "val/bpb") -> float | None:
    """Minimum of column ``key`` over the rows of a Lightning ``CSVLogger`` file (None if never logged)."""
    path = Path(metrics_csv)
    if not path.is_file():
        return None
    values: list[float] = []
    try:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                cell = row.get(key)
                if cell not in (None, ""):
                    value = float(cell)
                    if not math.isnan(value):
                        values.append(value)
    except (OSError, ValueError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read column {key!r} ({exc})") from exc
    return min(values) if values else None


def mechanism_name(attention_target: str | None, hydra_cfg: DictConfig | None, backend: str | None = None) -> str | None:
    """The ``model/attention`` choice: from ``.hydra/hydra.yaml``'s runtime choices, else from the class."""
    if hydra_cfg is not None:
        choices = _select(hydra_cfg, "hydra.runtime.choices")
        if choices is not None:
            choice = OmegaConf.to_container(choices, resolve=False).get("model/attention")
            if choice:
                return str(choice)
    if not attention_target:
        return None
    cls = attention_target.rsplit(".", 1)[-1]
    if cls == "SDPAttention" and backend == "flash":
        return "flash"
    return _CLASS_TO_CHOICE.get(cls, cls.removesuffix("Attention").lower() or cls)


def _params_millions(summary: dict[str, Any], run_dir: Path) -> float | None:
    for key in ("params", "n_params", "num_params"):
        if summary.get(key) is not None:
            return float(summary[key]) / 1e6
    log = run_dir / "train.log"
    if log.is_file():
        match = _PARAMS_LINE.search(log.read_text(errors="replace"))
        if match:
            return float(match.group(1))
    return None


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when below it (portable tables), else absolute."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """One table row (keys = :data:`COLUMNS`) for the run folder ``run_dir``."""
    run = Path(run_dir).resolve()
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"{run}: no summary.json (the run did not finish)")
    summary = _read_json(summary_path)
    config = _read_yaml(run / ".hydra" / "config.yaml")
    hydra_cfg = _read_yaml(run / ".hydra" / "hydra.yaml")
    overrides = _read_yaml(run / ".hydra" / "overrides.yaml")

    target = _select(config, "model.attention._target_")
    # summary.json's `attention` is the kernel class in older runs and the model/attention choice in
    # newer ones; either serves when the config is missing.
    named = str(summary["attention"]) if summary.get("attention") else None
    attention_class = target.rsplit(".", 1)[-1] if target else named if named and named.endswith("Attention") else None
    if target is None and named:
        target = named

    def setting(key: str, summary_key: str | None = None) -> Any:
        value = _select(config, key)
        return summary.get(summary_key) if value is None and summary_key else value

    row: dict[str, Any] = {
        "run_dir": _display_path(run),
        "mechanism": mechanism_name(target, hydra_cfg, _select(config, "model.attention.backend")),
        "seq_len": setting("data.seq_len", "seq_len"),
        "seed": setting("seed"),
        "batch_size": setting("data.batch_size"),
        "d_model": setting("model.d_model"),
        "n_layers": setting("model.n_layers"),
        "n_heads": setting("model.n_heads"),
        "steps": summary.get("steps"),
        "val_bpb": summary.get("val_bpb"),
        "best_val_bpb": best_metric(run / "csv" / "metrics.csv", "val/bpb"),
        "val_unigram_bpb": summary.get("val_unigram_bpb"),
        "val_acc": summary.get("val_acc"),
        "val_loss": summary.get("val_loss"),
        "test_bpb": summary.get("test_bpb"),
        "test_unigram_bpb": summary.get("test_unigram_bpb"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "step_time_s": summary.get("step_time_s"),
        "peak_mem_mib": summary.get("peak_mem_mib"),
        "attention_backend": summary.get("attention_backend"),
        "device": summary.get("device"),
        "params_m": _params_millions(summary, run),
        "task_name": _select(config, "task_name"),
        "attention_class": attention_class,
        "overrides": " ".join(str(o) for o in overrides) if overrides is not None else None,
    }
    # Any other task's metrics (val_mse, test_pearson, val_baseline_mse, ...) as extra columns.
    for key, value in summary.items():
        if key.startswith(("val_", "test_")) and key not in row and isinstance(value, int | float):
            row[key] = float(value)
    return _typed(row)


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """Coerce numeric columns (empty strings and unparsable values become None, NaN stays NaN)."""
    out = dict(row)
    for key, value in row.items():
        if value is None or value == "":
            out[key] = None
        elif key in FLOAT_COLUMNS:
            try:
                out[key] = float(value)
            except (TypeError, ValueError):
                out[key] = None
        elif key in INT_COLUMNS:
            try:
                out[key] = int(float(value))
            except (TypeError, ValueError):
                out[key] = None
    return out


def collect_runs(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Rows for every run below ``paths``, sorted by mechanism, length, seed, folder."""
    rows = [read_run(d) for d in find_run_dirs(paths)]

    def key(r: dict[str, Any]) -> tuple:
        return (r["mechanism"] or "", r["seq_len"] or 0, r["seed"] if r["seed"] is not None else -1, r["run_dir"])

    return sorted(rows, key=key)


def write_table(rows: Sequence[dict[str, Any]], out: str | os.PathLike[str], parquet: bool = True) -> list[Path]:
    """Write ``rows`` as CSV at ``out`` (and ``out`` with suffix ``.parquet`` if pyarrow is importable).

    Returns the paths written. Columns are :data:`COLUMNS` followed by any extra keys in the rows.
    """
    out_path = Path(out)
    if out_path.suffix != ".csv":
        raise UserError(f"{out_path}: the output table must end in .csv")
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    fields = [*COLUMNS, *extra]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in fields})
    written = [out_path]
    if parquet:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return written
        table = pa.Table.from_pylist([{k: r.get(k) for k in fields} for r in rows])
        pq.write_table(table, out_path.with_suffix(".parquet"))
        written.append(out_path.with_suffix(".parquet"))
    return written


def read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a table written by :func:`write_table` back, numeric columns typed, empty cells None."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such results table (make one with scripts/collect_results.py)")
    with open(p, newline="") as fh:
        return [_typed(row) for row in csv.DictReader(fh)]
