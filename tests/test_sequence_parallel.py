"""Sequence parallelism: 2 gloo processes that split one sequence compute what one process computes.

Float64 throughout, so the comparisons are tight (1e-10): outputs gathered from the shards equal the
whole-sequence forward, and the shards' parameter gradients summed over the group equal the
whole-sequence gradients, for every kernel that supports sequence parallelism (with padding, several
chunks per shard, rotary positions). The masked-LM task's loss scaling is checked against DDP's
gradient averaging.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from distributed import run_ranks
from hydra.utils import instantiate

from longseq.attention import sequence_parallel as sp_mod
from longseq.errors import UserError
from longseq.models.dna import DNAEncoder
from longseq.tasks.mlm import MaskedLMTask

SEQ, D_MODEL = 64, 16
KERNELS = {
    "linear_elu": {"_target_": "longseq.attention.linear_elu.LinearEluAttention", "chunk_size": 8},
    "performer": {"_target_": "longseq.attention.performer.PerformerAttention", "chunk_size": 8, "num_features": 32},
    "cosformer": {"_target_": "longseq.attention.cosformer.CosformerAttention", "chunk_size": 8},
}


def make_encoder(name: str, sequence_parallel: int) -> DNAEncoder:
    torch.manual_seed(0)  # the same weights on every rank
    attention = instantiate({**KERNELS[name], "_partial_": True})
    return DNAEncoder(7, SEQ, attention, d_model=D_MODEL, n_layers=2, n_heads=2, sequence_parallel=sequence_parallel).double()


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 5, (2, SEQ), generator=g)
    mask = torch.ones(2, SEQ, dtype=torch.bool)
    mask[1, 45:] = False  # padding only in the second shard of the second row
    weight = torch.randn(2, SEQ, D_MODEL, generator=g, dtype=torch.float64)
    return tokens, mask, weight


def _sharded_step(
    model: DNAEncoder, size: int, tokens: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Split the sequence over groups of ``size`` ranks, run forward and the weighted-sum backward on
    this rank's shard; returns the output gathered over the group (the whole sequence) and each
    parameter's gradient summed over the group (= the whole sequence's gradient)."""
    sp = sp_mod.new_groups(size)
    sp_mod.enable(model, sp)
    out = model(sp.shard(tokens), sp.shard(mask))
    (out * sp.shard(weight))[sp.shard(mask)].sum().backward()
    parts = [torch.empty_like(out) for _ in range(size)]
    dist.all_gather(parts, out.detach().contiguous(), group=sp.group)
    grads = {}
    for n, p in model.named_parameters():
        grads[n] = p.grad.clone()
        dist.all_reduce(grads[n], group=sp.group)
    return torch.cat(parts, dim=1), grads


def _encoder_worker(rank: int, world: int, name: str, size: int | None = None) -> None:
    size = size or world  # ranks per sequence-parallel group
    model = make_encoder(name, size)
    tokens, mask, weight = inputs()
    ref = model(tokens, mask)  # the whole sequence in this process: the reference
    (ref * weight)[mask].sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    out, grads = _sharded_step(model, size, tokens, mask, weight)
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=1e-10)
    for n, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[n], rtol=1e-9, atol=1e-10, msg=lambda m, n=n: f"{n}: {m}")


def _all_reduce_grad_worker(rank: int, world: int) -> None:
    x = torch.full((3,), float(rank + 1), dtype=torch.float64, requires_grad=True)
    y = sp_mod.differentiable_all_reduce(x)  # SUM
    torch.testing.assert_close(y.detach(), torch.full((3,), 3.0, dtype=torch.float64))
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) * (rank + 1)  # rank-dependent loss weights
    (c * y).sum().backward()
    # d(Σ_r c_r·y)/dx_r = Σ_r c_r: the backward of a SUM all-reduce is a SUM all-reduce of gradients
    torch.testing.assert_close(x.grad, torch.tensor([3.0, 6.0, 9.0], dtype=torch.float64))


def _mlm_worker(rank: int, world: int, size: int | None = None) -> None:
    """The task's training loss under SP, with DDP's averaging of gradients, gives the single-process gradient."""
    size = size or world
    torch.manual_seed(0)
    task = MaskedLMTask(make_encoder("linear_elu", size), total_steps=10).double()
    task.log = lambda *a, **k: None
    tokens, mask, _ = inputs()
    batch = {"tokens": tokens, "padding_mask": mask}
    ref_loss = task.training_step(batch, 0)
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}
    task.zero_grad()

    sp = sp_mod.new_groups(size)
    task.enable_sequence_parallel(sp)
    loss = task.training_step({k: sp.shard(v) for k, v in batch.items()}, 0)
    loss.backward()
    torch.testing.assert_close(task.last_train_loss, ref_loss.detach(), rtol=1e-12, atol=0)
    for n, p in task.named_parameters():
        if n not in ref_grads:
            continue
        grad = p.grad.clone()
        dist.all_reduce(grad)
        grad /= world  # what DDP does: average over every rank (here all groups hold the same window)
        torch.testing.assert_close(grad, ref_grads[n], rtol=1e-9, atol=1e-10, msg=lambda m, n=n: f"{n}: {m}")


def _all_checks(rank: int, world: int) -> None:
    _all_reduce_grad_worker(rank, world)
    for name in sorted(KERNELS):
        _encoder_worker(rank, world, name)
    _mlm_worker(rank, world)


def _groups_of_two(rank: int, world: int) -> None:
    _encoder_worker(rank, world, "performer", 2)
    _mlm_worker(rank, world, 2)


@pytest.mark.slow
def test_four_ranks_in_two_groups_of_two(tmp_path):
    """Sequence parallelism inside data parallelism: 4 processes, groups {0, 1} and {2, 3}."""
    run_ranks(_groups_of_two, 4, tmp_path)


def _fused_worker(rank: int, world: int) -> None:
    """The fused Triton kernels (Triton's CPU interpreter, fp32) split over the ranks against the
    PyTorch path on the whole sequence in float64: the FAVOR+ key-stabiliser MAX reduction, the
    rescaling of each shard's state to it, and cosFormer's global positions go through the kernels."""
    seq, width = 128, 32  # head_dim 16: a size the kernels take
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 5, (2, seq), generator=g)
    mask = torch.ones(2, seq, dtype=torch.bool)
    mask[1, 90:] = False
    weight = torch.randn(2, seq, width, generator=g)
    for name in sorted(KERNELS):
        def build(impl: str, size: int, name: str = name) -> DNAEncoder:
            torch.manual_seed(0)
            attention = instantiate({**KERNELS[name], "impl": impl, "_partial_": True})
            return DNAEncoder(7, seq, attention, d_model=width, n_layers=2, n_heads=2, sequence_parallel=size)

        ref_model = build("torch", 1).double()
        ref = ref_model(tokens, mask)
        (ref * weight.double())[mask].sum().backward()
        out, grads = _sharded_step(build("triton", world), world, tokens, mask, weight)
        torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-4, atol=1e-4,
                                   msg=lambda m, name=name: f"{name} output: {m}")
        for (n, grad), (_, p_ref) in zip(grads.items(), ref_model.named_parameters(), strict=True):
            torch.testing.assert_close(grad.double(), p_ref.grad, rtol=1e-3, atol=1e-4,
                                       msg=lambda m, n=n, name=name: f"{name} {n}: {m}")


def test_two_ranks_through_the_fused_triton_kernels(tmp_path, monkeypatch):
    """Sequence parallelism through the fused kernels (what ``impl: auto`` runs on CUDA), checked on
    CPU in Triton's interpreter: the spawned ranks import Triton with TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("LONGSEQ_TRITON_TUNE", "0")
    run_ranks(_fused_worker, 2, tmp_path)


def test_two_ranks_splitting_a_sequence_equal_one_process(tmp_path):
    """One spawn of 2 gloo processes (start-up dominates): the differentiable all-reduce's gradient,
    encoder outputs and summed gradients for every SP kernel, and the masked-LM loss and its
    DDP-averaged gradient, each against the same computation on the whole sequence in float64."""
    run_ranks(_all_checks, 2, tmp_path)


@pytest.mark.parametrize(
    "attention",
    [
        {"_target_": "longseq.attention.sdpa.SDPAttention"},
        {"_target_": "longseq.attention.linformer.LinformerAttention", "k": 8},
        {
            "_target_": "longseq.attention.hybrid.HybridAttention",
            "window": 4,
            "local_heads": 1,
            "global_attention": {"_target_": "longseq.attention.linear_elu.LinearEluAttention", "_partial_": True},
        },
    ],
    ids=["sdpa", "linformer", "hybrid"],
)
def test_kernels_without_a_global_state_are_refused(attention):
    with pytest.raises(UserError, match="model.sequence_parallel=2 .* only the linear"):
        DNAEncoder(7, SEQ, instantiate({**attention, "_partial_": True}), d_model=D_MODEL, n_layers=1, n_heads=2, sequence_parallel=2)


def test_sequence_length_must_split_into_equal_shards():
    with pytest.raises(UserError, match="must divide the sequence length"):
        DNAEncoder(7, 66, instantiate({**KERNELS["linear_elu"], "_partial_": True}), d_model=D_MODEL, n_layers=1, n_heads=2, sequence_parallel=4)
