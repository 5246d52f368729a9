"""Logs tokens/s, step time, peak memory and the attention backend that actually ran.

Tokens are counted as real (non-padding) positions of each training batch; step time is measured
between consecutive ``on_train_batch_end`` calls, so it includes data loading (what a user waits for).
Peak memory is the CUDA allocator's peak on GPU (reset at the start of every run) and the process's
max RSS on CPU (which cannot be reset: in a multirun, later jobs report the peak of all jobs so far).
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process on ``device`` in MiB (CUDA allocator peak, or CPU max RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def attention_backends(module: torch.nn.Module) -> str:
    """Comma-joined, de-duplicated ``last_backend`` of every exact kernel in ``module`` (or ``-``)."""
    names = sorted({m.last_backend for m in module.modules() if hasattr(m, "last_backend")})
    return ",".join(names) if names else "-"


class SpeedMonitor(pl.Callback):
    """Logs ``perf/tokens_per_s``, ``perf/step_time_s`` and ``perf/peak_mem_mib`` every ``log_every`` steps."""

    def __init__(self, log_every: int = 10, warmup_steps: int = 2) -> None:
        self.log_every = log_every
        self.warmup_steps = warmup_steps  # first steps include compilation and worker start-up
        self._last: float | None = None
        self._tokens = 0
        self._time = 0.0
        self._window_tokens = 0
        self._window_time = 0.0
        self._window_steps = 0
        self._timed_steps = 0
        self._steps = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            now = time.perf_counter()
        tokens = int(batch["padding_mask"].sum()) * trainer.world_size if isinstance(batch, dict) else 0
        self._steps += 1
        if self._last is not None and self._steps > self.warmup_steps:
            dt = now - self._last
            self._tokens += tokens
            self._time += dt
            self._window_tokens += tokens
            self._window_time += dt
            self._window_steps += 1
            self._timed_steps += 1
        self._last = now
        if self._steps % self.log_every == 0 and self._window_time > 0:
            pl_module.log_dict(
                {
                    "perf/tokens_per_s": self._window_tokens / self._window_time,
                    "perf/step_time_s": self._window_time / max(1, self._window_steps),
                    "perf/peak_mem_mib": peak_memory_mib(pl_module.device),
                },
                on_step=True,
                on_epoch=False,
            )
            self._window_tokens, self._window_time, self._window_steps = 0, 0.0, 0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None  # validation time is not training throughput

    def summary(self, device: torch.device) -> dict[str, float]:
        """Totals over the whole run (after warm-up)."""
        return {
            "tokens_per_s": self._tokens / self._time if self._time > 0 else float("nan"),
            "step_time_s": self._time / max(1, self._timed_steps),
            "peak_mem_mib": peak_memory_mib(device),
        }
