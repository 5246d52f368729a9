"""Train an encoder-only model: ``python train.py [group=choice ...] [key=value ...]`` (Hydra).

Examples:
    python train.py                                   # MLM on D. melanogaster chr4, CPU, ~10 min
    python train.py model/attention=performer data.seq_len=4096 trainer=gpu logger=wandb
    python train.py -m model/attention=sdpa,linear_elu,performer   # a multirun sweep
    python train.py trainer=ddp trainer.devices=4 global_batch_size=64   # DDP (README "Multi-GPU")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("LONGSEQ_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from longseq.parallel import launcher_overrides  # noqa: E402
from longseq.pipeline import train, user_error_in  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except Exception as exc:
        message = user_error_in(exc)
        if message is None:
            raise  # a bug, not a user mistake: keep the traceback
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    return summary.get("val_bpb")  # the value a Hydra sweeper minimises


if __name__ == "__main__":
    try:  # ranks of one DDP job (torchrun, SLURM, Lightning's launcher) share one run folder
        sys.argv += launcher_overrides(sys.argv[1:], os.environ)
    except Exception as exc:
        print(f"error: {user_error_in(exc) or exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
