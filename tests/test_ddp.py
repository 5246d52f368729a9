"""DDP through the real entry point: `python train.py trainer=ddp` with 2 gloo processes on CPU.

One run folder (configs, logs, checkpoints, summary written once), identical parameters and
Performer features on both ranks after training, mid-epoch resume that continues the loss curve
exactly, sequence parallelism reproducing the single-process loss curve (slow), and the refusals
(multirun, impossible layouts) as one-line errors.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose, small_overrides
from test_train_entrypoint import run_train, train_losses

from longseq.errors import UserError
from longseq.parallel import derive_accumulation, launcher_overrides
from longseq.pipeline import train, user_error_in

DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2"]


def run_ddp(*args: str, check: bool = True, flags: tuple[str, ...] = (), timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *flags, *DDP_CPU, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_ddp_run_folder_identical_ranks_and_mid_epoch_resume(tiny_fasta, tmp_path):
    common = small_overrides(
        tiny_fasta, "trainer.val_check_interval=50", "test=false", "data.num_workers=1", "trainer.max_steps=6",
        "model/attention=performer", "model.attention.num_features=16", "callbacks.feature_redraw.interval=2",
        "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.save_top_k=-1",
        "callbacks.model_checkpoint.every_n_train_steps=3", "global_batch_size=16",  # 4 per rank x 2 ranks x 2 accumulated
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_ddp(*common, f"hydra.run.dir={straight}", "+callbacks.save_rank._target_=distributed.SaveRankState",
            f"+callbacks.save_rank.path={tmp_path / 'state'}")

    # One run folder: .hydra written once, one log file, rank 0's summary with the layout.
    assert sorted(p.name for p in straight.iterdir()) == [".hydra", "checkpoints", "csv", "summary.json", "train.log"]
    summary = json.loads((straight / "summary.json").read_text())
    assert (summary["world_size"], summary["grad_accumulation"], summary["global_batch_size"], summary["steps"]) == (2, 2, 16, 6)

    # Both ranks end with the same parameters and buffers (Performer features redrawn at steps 2 and 4).
    a, b = (torch.load(tmp_path / f"state.rank{r}.pt") for r in (0, 1))
    assert a.keys() == b.keys() and any("projection" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert int(a["model.encoder.layers.0.attn.kernel.redraw_count"]) == 2

    # Killed after step 3 and resumed: the same windows, masks and losses as the run that never stopped.
    step3 = straight / "checkpoints" / "best-step000003.ckpt"
    run_ddp(*common, f"ckpt_path={step3}", f"hydra.run.dir={resumed}")
    x, y = train_losses(straight), train_losses(resumed)
    assert sorted(x) == [0, 1, 2, 3, 4, 5] and sorted(y) == [3, 4, 5]
    for step in (3, 4, 5):
        assert abs(x[step] - y[step]) <= 1e-5 * abs(x[step]), (step, x[step], y[step])


@pytest.mark.slow
def test_sequence_parallel_run_reproduces_the_single_process_loss_curve(tiny_fasta, tmp_path):
    common = small_overrides(tiny_fasta, "model/attention=linear_elu", "model.attention.chunk_size=64", "test=false")
    run_train(*common, f"hydra.run.dir={tmp_path / 'one'}")
    run_ddp(*common, "model.sequence_parallel=2", f"hydra.run.dir={tmp_path / 'sp'}")
    one, sp = train_losses(tmp_path / "one"), train_losses(tmp_path / "sp")
    assert sorted(one) == sorted(sp) == [0, 1, 2, 3]
    for step in one:
        assert abs(one[step] - sp[step]) <= 1e-5 * one[step], (step, one[step], sp[step])
    s1, s2 = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "sp"))
    assert s2["sequence_parallel"] == 2 and abs(s1["val_bpb"] - s2["val_bpb"]) < 1e-5


def test_sequence_parallel_evaluates_windows_whose_second_shard_is_all_padding(tiny_fasta, tmp_path):
    """Validation windows shorter than one shard: rank 1 scores nothing, yet joins every collective
    (the metrics' epoch-end sync). This run hung before the metrics were logged at the epoch's end."""
    args = small_overrides(
        tiny_fasta, "data.seq_len=4096", "data.batch_size=1", "model/attention=linear_elu", "model.attention.chunk_size=512",
        "model.sequence_parallel=2", "trainer.max_steps=2", "trainer.num_sanity_val_steps=1", "test=false",
    )
    run_ddp(*args, f"hydra.run.dir={tmp_path / 'run'}", timeout=240)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and 1.5 < summary["val_bpb"] < 2.5


def test_ddp_with_fewer_validation_windows_than_ranks(tiny_fasta, tmp_path):
    """One validation window, two ranks: the second re-reads it rather than skipping validation
    (which would leave rank 0 alone in the metrics' sync)."""
    args = small_overrides(
        tiny_fasta, f"data.bed={ROOT / 'tests' / 'assets' / 'tiny.bed'}", "data.seq_len=4096", "data.batch_size=1",
        "model/attention=linear_elu", "trainer.max_steps=2", "trainer.num_sanity_val_steps=1", "test=false",
    )
    run_ddp(*args, f"hydra.run.dir={tmp_path / 'run'}", timeout=240)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2


def test_multirun_with_ddp_is_a_one_line_error(tiny_fasta, tmp_path):
    result = run_ddp(*small_overrides(tiny_fasta), "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}", check=False, flags=("-m",))
    assert result.returncode == 2 and "multirun (-m) with 2 processes per job is not supported" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["global_batch_size=12"], "global_batch_size=12 is not a multiple of data.batch_size=4 x 2"),
        (["model/attention=sdpa", "model.sequence_parallel=2"], "only the linear kernels"),
        (["model/attention=linear_elu", "model.sequence_parallel=4"], "must divide the number of processes \\(2\\)"),
    ],
)
def test_impossible_parallel_layouts_are_user_errors(overrides, message, tiny_fasta, tmp_path):
    # In-process: the checks run before fit, i.e. before Lightning would start the other ranks.
    cfg = compose(small_overrides(tiny_fasta, *DDP_CPU, *overrides), output_dir=tmp_path)
    with pytest.raises(Exception) as info:  # noqa: PT011 - a UserError, possibly wrapped by Hydra's instantiate
        train(cfg)
    found = user_error_in(info.value)  # what train.py prints as its one-line error
    assert found is not None and re.search(message, found), found


def test_sequence_parallel_needs_a_task_that_trains_on_shards():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from longseq.parallel import configure

    cfg = OmegaConf.create({"model": {"sequence_parallel": 2}, "data": {"batch_size": 1, "seq_len": 64}, "trainer": {}})
    trainer = SimpleNamespace(world_size=2, callbacks=[])
    with pytest.raises(UserError, match="only task=mlm"):
        configure(cfg, trainer, SimpleNamespace(seq_len=64), torch.nn.Module())
    layout = configure(cfg, trainer, dm := SimpleNamespace(seq_len=64), SimpleNamespace(supports_sequence_parallel=True))
    assert layout["dp_replicas"] == 1 and dm.sequence_parallel == 2 and len(trainer.callbacks) == 1


def test_global_batch_derives_the_accumulation():
    assert derive_accumulation(64, 8, 2) == 4
    assert derive_accumulation(64, 8, 8) == 1
    with pytest.raises(UserError, match="not a multiple"):
        derive_accumulation(64, 8, 3)
    with pytest.raises(UserError, match="contradicts"):
        derive_accumulation(64, 8, 2, configured=2)


def test_launcher_overrides_give_every_rank_one_run_folder():
    # Lightning's own children: run dir given by Lightning; ranks > 0 write no .hydra and no log file.
    child = ["x=1", 'hydra.run.dir="/r"', "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    assert launcher_overrides(child, {"LOCAL_RANK": "1"}) == ["hydra/job_logging=stdout"]
    assert launcher_overrides(["x=1"], {}) == []
    # torchrun: a folder named after the rendezvous id, the same on every rank.
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "abc"}
    assert launcher_overrides([], env) == [
        "hydra.run.dir=${paths.log_dir}/${task_name}/runs/torchrun-abc", "hydra.output_subdir=null", "hydra/job_logging=stdout",
    ]
    assert launcher_overrides([], {**env, "RANK": "0"}) == ["hydra.run.dir=${paths.log_dir}/${task_name}/runs/torchrun-abc"]
    assert launcher_overrides(["hydra.run.dir=/mine"], {**env, "RANK": "0"}) == []
    with pytest.raises(UserError, match="torchrun without a run id"):
        launcher_overrides([], {**env, "TORCHELASTIC_RUN_ID": "none"})
    slurm = {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "77", "SLURM_PROCID": "2"}
    assert launcher_overrides([], slurm)[0].endswith("/runs/slurm-77")
