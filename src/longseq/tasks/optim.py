"""AdamW with decoupled weight decay on matrices only, and a linear-warm-up + cosine schedule."""

from __future__ import annotations

from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from longseq.errors import UserError


def adamw(
    module: nn.Module, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.98)
) -> AdamW:
    """AdamW where biases, norms and embeddings (1-D or embedding tables) get no weight decay."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return AdamW(groups, lr=lr, betas=tuple(betas))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> LRScheduler:
    """Linear warm-up from ~0 to the base rate over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    if total_steps is None or total_steps <= 0:
        raise UserError(f"the schedule needs trainer.max_steps > 0, got {total_steps}")
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    base = optimizer.param_groups[0]["lr"]
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1), eta_min=base * min_lr_ratio)
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
