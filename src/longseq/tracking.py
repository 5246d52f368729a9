"""Experiment-tracking helpers: a Weights & Biases logger that stays offline unless the user logged in."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger


def wandb_logged_in() -> bool:
    """True when W&B credentials exist (``WANDB_API_KEY`` or a ``~/.netrc`` entry from ``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    return rc.authenticators(host) is not None


def wandb_logger(mode: str = "auto", **kwargs: Any) -> WandbLogger:
    """A :class:`WandbLogger`; ``mode`` is ``auto`` (online only when logged in), ``online`` or ``offline``.

    ``WANDB_MODE`` in the environment wins, as it does for wandb itself. Offline runs are synced later
    with ``wandb sync <run folder>/wandb/offline-run-*``.
    """
    if mode not in ("auto", "online", "offline"):
        raise ValueError(f"logger.wandb.mode must be auto, online or offline, got {mode!r}")
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        offline = env_mode in ("offline", "dryrun", "disabled")
    else:
        offline = mode == "offline" or (mode == "auto" and not wandb_logged_in())
    if kwargs.get("save_dir"):
        Path(kwargs["save_dir"]).mkdir(parents=True, exist_ok=True)
    return WandbLogger(offline=offline, **kwargs)
