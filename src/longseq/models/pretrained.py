"""Initialise an encoder from a pretraining checkpoint (``init_from=.../last.ckpt``).

Only the encoder (the task's ``model.`` sub-module) is loaded; task heads stay new. The checkpoint
must come from a compatible model: same attention mechanism and same parameter shapes. Anything
else is a :class:`UserError` naming what differs, never a silent partial load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from longseq.errors import UserError

MODEL_CONFIG_KEY = "longseq_model_config"  # written by longseq.tasks.base.Task.on_save_checkpoint
_PREFIX = "model."


def read_checkpoint(path: str | Path, option: str, fix: str) -> Any:
    """The contents of checkpoint file ``path`` (given as ``option``), read on the CPU; a missing or
    unreadable file is a one-line :class:`UserError` ending in ``fix``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{option}={p} does not exist ({fix})")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user mistake
        raise UserError(f"{option}={p} is not a readable PyTorch checkpoint ({type(exc).__name__}; {fix})") from exc


def load_encoder(
    model: nn.Module, path: str | Path, model_config: dict[str, Any] | None = None, checkpoint: Any = None
) -> list[str]:
    """Load the encoder weights of checkpoint ``path`` into ``model``; returns the loaded keys.

    ``model_config`` (the resolved ``cfg.model`` of this run) is compared with the checkpoint's to
    refuse a different attention mechanism with a clear message. ``checkpoint``: the file's contents
    when the caller has already read it (it is then not read again).
    """
    p = Path(path).expanduser()
    ckpt = checkpoint
    if ckpt is None:
        ckpt = read_checkpoint(p, "init_from", "point it at a pretraining run's checkpoints/last.ckpt")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"init_from={p} has no state_dict: is it a Lightning checkpoint written by train.py?")

    saved_cfg = ckpt.get(MODEL_CONFIG_KEY)
    if saved_cfg and model_config:
        saved_att = (saved_cfg.get("attention") or {}).get("_target_")
        this_att = (model_config.get("attention") or {}).get("_target_")
        if saved_att and this_att and saved_att != this_att:
            raise UserError(
                f"init_from={p} was trained with attention {saved_att.rsplit('.', 1)[-1]}, this model uses "
                f"{this_att.rsplit('.', 1)[-1]}: choose the same model/attention as the pretraining run"
            )

    encoder = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    if not encoder:
        raise UserError(f"init_from={p} holds no encoder weights (no 'model.*' keys)")
    own = model.state_dict()
    missing = sorted(set(own) - set(encoder))
    mismatched = [
        f"{k} {tuple(encoder[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in encoder and encoder[k].shape != own[k].shape
    ]
    if missing or mismatched:
        detail = "; ".join(mismatched[:3] + [f"missing {k}" for k in missing[:3]])
        raise UserError(
            f"init_from={p} does not match this encoder ({len(mismatched)} shape mismatches, {len(missing)} "
            f"missing tensors: {detail}); use the pretraining run's model settings (d_model, n_layers, ...)"
        )
    model.load_state_dict({k: encoder[k] for k in own}, strict=True)
    return sorted(own)
