"""Sequence parallelism for the linear-attention kernels: one sequence split along its length.

The ranks of a group each hold one contiguous, equal-length shard of the same sequence (rank ``r``
of ``P`` holds tokens ``[r·n/P, (r+1)·n/P)``). Everything pointwise in the encoder (embeddings,
norms, MLP, projections) runs on the shard alone. Only attention needs the whole sequence, and for
normalised linear attention the whole sequence enters through two small sums:

    S = Σ_j φ(k_j) v_jᵀ / count,   z = Σ_j φ(k_j) / count      (per batch row and head)

so each rank accumulates its shard's part of ``S`` and ``z`` and **one** SUM all-reduce of the
concatenated ``[S | z]`` gives every rank the global state; the read-out ``φ(q_i)·S / φ(q_i)·z`` is
local again. What else must be global:

- ``count``, the number of real tokens of the whole sequence (a SUM all-reduce of the shard counts,
  no gradient);
- positions: rotary embeddings and cosFormer's re-weighting use global indices, i.e. the shard's
  first index :meth:`SequenceParallel.offset` plus the local one;
- FAVOR+'s key stabiliser, one max per (batch, head) over the whole sequence: a MAX all-reduce of
  the detached shard maxima (every rank must subtract the same value for it to cancel in the ratio).

Gradients flow through the state all-reduce: the backward of a SUM all-reduce is a SUM all-reduce of
the incoming gradients (:func:`differentiable_all_reduce`; ``torch.distributed.nn.functional.all_reduce``
does the same but is deprecated from torch 2.13 on), so rank ``r``'s keys and
values receive the gradient of *every* rank's queries. Each rank's parameter gradient is then its
share of the gradient of the sum of the ranks' losses: summing the ranks' gradients (not averaging
them) gives the single-process gradient. Under DDP, which averages over all ``world`` ranks, the
training task multiplies its loss by the group size (see ``longseq.tasks.mlm``).

Exact attention (``sdpa``, ``flash``), Linformer (a projection of the whole sequence axis) and the
hybrid (local windows cross shard borders) are refused: every kernel declares
``supports_sequence_parallel``. Plain ``torch.distributed``: no Lightning here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from longseq.errors import UserError

SUPPORTED = "linear_elu, performer, cosformer"


class _AllReduceSum(torch.autograd.Function):
    """``y = Σ_ranks x``; backward: ``dx = Σ_ranks dy`` (each rank's ``y`` feeds that rank's loss, and
    the total loss is the sum over ranks, so every ``x`` gets the sum of all ranks' gradients)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def differentiable_all_reduce(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """SUM all-reduce through which gradients flow (their SUM all-reduce in backward)."""
    return _AllReduceSum.apply(x, group)


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place in its sequence-parallel group: ``rank`` of ``size`` (``group`` None = world)."""

    group: dist.ProcessGroup | None
    rank: int
    size: int

    def offset(self, local_len: int) -> int:
        """Global index of this rank's first token when every shard holds ``local_len`` tokens."""
        return self.rank * local_len

    def global_count(self, padding_mask: torch.Tensor | None, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Real tokens of the whole sequence, ``(batch, 1, 1, 1)`` in ``dtype``, clamped at 1.

        ``x`` (batch, heads, local_seq, head_dim) gives the shape and device; ``padding_mask``
        (batch, local_seq) or None (all real). The clamp comes after the sum: a shard with no real
        token is normal, a sequence with none divides 0 by 1.
        """
        batch, local_seq = x.shape[0], x.shape[-2]
        if padding_mask is None:
            count = torch.full((batch,), float(local_seq), dtype=torch.float64, device=x.device)
        else:
            count = padding_mask.sum(dim=-1).to(torch.float64)
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=self.group)  # exact integers in fp64
        return count.clamp_min(1).to(dtype)[:, None, None, None]

    def all_reduce_state(self, s: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable SUM of ``s`` (batch, heads, features, head_dim) and ``z`` (batch, heads,
        features) over the group, in one collective."""
        both = torch.cat([s, z.unsqueeze(-1)], dim=-1)  # (batch, heads, features, head_dim + 1)
        both = differentiable_all_reduce(both, self.group)
        return both[..., :-1], both[..., -1]

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise MAX over the group of a detached tensor (the FAVOR+ key stabiliser)."""
        x = x.detach().clone()
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=self.group)
        return x

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """SUM over the group of a detached tensor (counts and logged losses; no gradient)."""
        x = x.detach().clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        return x

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's shard of a full-length tensor along ``dim``."""
        n = x.shape[dim]
        if n % self.size:
            raise UserError(f"a sequence of {n} tokens does not split into {self.size} equal shards")
        step = n // self.size
        return x.narrow(dim, self.rank * step, step)


def new_groups(size: int) -> SequenceParallel:
    """Split the initialised world into consecutive groups of ``size`` ranks; this rank's group.

    Ranks ``[0, size)`` form group 0, ``[size, 2·size)`` group 1, ... Every rank must call this (with
    the same ``size``): ``torch.distributed.new_group`` is collective.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if size <= 0 or world % size:
        raise UserError(
            f"model.sequence_parallel={size} must divide the number of processes ({world}): set "
            f"trainer.devices (x trainer.num_nodes) to a multiple of it"
        )
    if size == world:
        return SequenceParallel(None, rank, size)
    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    return SequenceParallel(mine, rank % size, size)


def unsupported_kernels(module: nn.Module) -> list[str]:
    """Class names of the attention kernels in ``module`` that cannot run sequence-parallel."""
    from longseq.attention.base import AttentionKernel

    return sorted(
        {type(m).__name__ for m in module.modules() if isinstance(m, AttentionKernel) and not m.supports_sequence_parallel}
    )


def check_supported(module: nn.Module, size: int) -> None:
    """Raise a :class:`UserError` when ``module`` holds a kernel that cannot split a sequence."""
    bad = unsupported_kernels(module)
    if size > 1 and bad:
        raise UserError(
            f"model.sequence_parallel={size} splits one sequence over ranks, which only the linear "
            f"kernels with a global state support ({SUPPORTED}); {', '.join(bad)} cannot (exact and "
            f"Linformer attention need every key at every rank, the hybrid's windows cross shard "
            f"borders): choose model/attention={SUPPORTED.split(', ')[0]} or set model.sequence_parallel=1"
        )


def enable(module: nn.Module, sp: SequenceParallel | None) -> None:
    """Make every kernel and encoder in ``module`` run sequence-parallel in ``sp`` (None: switch off)."""
    if sp is not None:
        check_supported(module, sp.size)
    for m in module.modules():
        if hasattr(m, "supports_sequence_parallel"):
            m.sequence_parallel = sp
        if hasattr(m, "key_stabiliser_reduce"):  # FAVOR+: every rank subtracts the global key max
            m.key_stabiliser_reduce = None if sp is None else sp.all_reduce_max
