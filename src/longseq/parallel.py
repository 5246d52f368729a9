"""Multi-process training plumbing: Hydra under DDP launchers, global batch size, sequence parallelism.

- Launch: ``python train.py trainer=ddp trainer.devices=N`` lets Lightning re-run ``train.py`` once per
  extra device; Lightning passes those children the parent's ``hydra.run.dir`` and
  ``hydra.output_subdir=null``, so there is one run folder and only rank 0 writes ``.hydra/``.
  Under an external launcher (``torchrun``, SLURM ``srun``) every rank starts Hydra itself:
  :func:`launcher_overrides` gives them one run folder named after the launcher's job id, and ranks
  other than 0 neither write ``.hydra/`` nor a log file (see :func:`launcher_overrides`).
- Checkpoints, loggers and ``summary.json``: rank 0 only (Lightning's checkpointing and loggers are
  rank-zero; the pipeline writes the summary on rank 0).
- A Hydra multirun (``-m``) with more than one process is refused: Lightning's re-launch would re-run
  the whole sweep in every child.
- ``global_batch_size``: windows per optimizer step over all processes. With ``P``-way sequence
  parallelism the ``W`` processes form ``W/P`` data-parallel replicas, so
  ``data.batch_size × W/P × trainer.accumulate_grad_batches = global_batch_size``; the accumulation
  is derived from it, the same global batch whatever the number of devices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from longseq.errors import UserError

log = logging.getLogger(__name__)


def _rank_from_env(env: Mapping[str, str]) -> int:
    """This process's global rank, or for Lightning's launcher (which sets only LOCAL_RANK and
    NODE_RANK) a number that is 0 exactly for global rank 0."""
    for key in ("RANK", "SLURM_PROCID"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return sum(int(env.get(k, "0")) for k in ("LOCAL_RANK", "NODE_RANK") if env.get(k, "").isdigit())


def _external_job_id(env: Mapping[str, str]) -> str | None:
    """A run id every rank of an external launcher shares, or None when not under one."""
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
        step = env.get("SLURM_STEP_ID")
        return f"slurm-{env['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return None


def launcher_overrides(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Hydra overrides to append to ``argv`` so every rank of one job shares one run folder.

    - A rank started by Lightning's DDP launcher already carries ``hydra.run.dir`` and
      ``hydra.output_subdir=null``; ranks > 0 also log to stdout only (no ``train_ddp_process_N.log``).
    - Under torchrun / SLURM without a ``hydra.run.dir`` override, the folder is named after the
      launcher's job id (``logs/<task>/runs/torchrun-<id>`` or ``slurm-<job>``), because each rank's own
      ``${now:}`` timestamp could differ; a torchrun without a run id (``--rdzv-id``/``--standalone``)
      must be given ``hydra.run.dir``. Ranks > 0 write no ``.hydra/`` folder.
    """
    extra: list[str] = []
    rank = _rank_from_env(env)
    given = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
    job = _external_job_id(env)
    if job is not None and "hydra.run.dir" not in given:
        if job.endswith("-none"):
            raise UserError(
                "torchrun without a run id: give every rank the same folder with hydra.run.dir=<folder> "
                "(or start torchrun with --standalone or --rdzv-id=<id>)"
            )
        extra.append(f"hydra.run.dir=${{paths.log_dir}}/${{task_name}}/runs/{job}")
    if rank > 0:
        if "hydra.output_subdir" not in given:
            extra.append("hydra.output_subdir=null")
        if "hydra/job_logging" not in given:
            extra.append("hydra/job_logging=stdout")
    return extra


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def derive_accumulation(global_batch: int, batch_size: int, replicas: int, configured: int = 1) -> int:
    """``accumulate_grad_batches`` so that ``batch_size × replicas × accumulation = global_batch``."""
    per_pass = batch_size * replicas
    if not isinstance(global_batch, int) or global_batch <= 0:
        raise UserError(f"global_batch_size must be a positive integer or null, got {global_batch!r}")
    if global_batch % per_pass:
        raise UserError(
            f"global_batch_size={global_batch} is not a multiple of data.batch_size={batch_size} x "
            f"{replicas} data-parallel replicas = {per_pass}: change global_batch_size or data.batch_size"
        )
    if configured != 1 and configured != global_batch // per_pass:
        raise UserError(
            f"trainer.accumulate_grad_batches={configured} contradicts global_batch_size={global_batch} "
            f"(which needs {global_batch // per_pass}): set only one of them"
        )
    return global_batch // per_pass


def configure(
    cfg: DictConfig, trainer: pl.Trainer, datamodule: pl.LightningDataModule, task: pl.LightningModule
) -> dict[str, Any]:
    """Check and apply the parallel layout of this run; returns it (for the run summary).

    Called on every rank, after the Trainer exists (its ``world_size`` is known) and before ``fit``
    (before Lightning launches the other ranks).
    """
    world = int(trainer.world_size)
    if world > 1 and is_multirun():
        raise UserError(
            f"a multirun (-m) with {world} processes per job is not supported: Lightning's DDP launcher "
            f"re-runs the command line, i.e. the whole sweep, in every process; launch each job as its "
            f"own `python train.py trainer=ddp ...` run (a shell loop or a SLURM array)"
        )
    sp = int(cfg.model.get("sequence_parallel", 1) or 1)
    if world % sp:
        raise UserError(
            f"model.sequence_parallel={sp} must divide the number of processes ({world}): use "
            f"trainer=ddp trainer.devices=<a multiple of {sp}>"
        )
    replicas = world // sp
    batch_size = int(cfg.data.batch_size)
    accumulation = int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    if cfg.get("global_batch_size") is not None:
        accumulation = derive_accumulation(cfg.global_batch_size, batch_size, replicas, accumulation)
        trainer.accumulate_grad_batches = accumulation
    if sp > 1:
        if not getattr(task, "supports_sequence_parallel", False):
            raise UserError(
                f"model.sequence_parallel={sp}: the task {type(task).__name__} cannot train on sequence "
                f"shards (only task=mlm can); set model.sequence_parallel=1"
            )
        if not hasattr(datamodule, "seq_len") or int(cfg.data.seq_len) % sp:
            raise UserError(f"model.sequence_parallel={sp} must divide data.seq_len={cfg.data.seq_len}")
        datamodule.sequence_parallel = sp  # each rank reads its shard of every window
        from longseq.callbacks.sequence_parallel import SequenceParallelSetup

        trainer.callbacks.append(SequenceParallelSetup(sp))
    layout = {
        "world_size": world,
        "sequence_parallel": sp,
        "dp_replicas": replicas,
        "grad_accumulation": accumulation,
        "global_batch_size": batch_size * replicas * accumulation,
    }
    log.info("parallel layout: %s", layout)
    return layout
