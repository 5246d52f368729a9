"""The kernel contract, checked on every YAML in conf/model/attention/ (a new mechanism is picked up here).

Each config is instantiated as Hydra would (``${seed}`` resolved from a root ``seed`` key), then:
output shape and dtype, finite gradients, padding invariance in float64, bf16 autocast against a
float64 reference, and, for every non-quadratic kernel, a finite bf16 forward at 1M tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from conftest import ROOT
from hydra.utils import instantiate
from omegaconf import OmegaConf

from longseq.attention.base import AttentionKernel
from longseq.errors import UserError

ATTENTION_DIR = ROOT / "conf" / "model" / "attention"
NAMES = sorted(p.stem for p in ATTENTION_DIR.glob("*.yaml"))

# Overrides that shrink a kernel so small test inputs still exercise its real code path (Linformer
# actually pools, the hybrid's window is shorter than the sequence, the linear kernels run several
# chunks).
# Kernels not listed run with their YAML defaults.
SHRINK: dict[str, dict[str, object]] = {
    "linformer": {"k": 8},
    "hybrid": {"window": 5},
    "performer": {"chunk_size": 16, "num_features": 64},
    "linear_elu": {"chunk_size": 16},
    "cosformer": {"chunk_size": 16},
}
# Non-default variants that get the same checks as the YAMLs (gradients, padding, bf16).
VARIANTS: list[tuple[str, dict[str, object]]] = [
    ("linformer", {"k": 8, "projection": "learned"}),
    ("linformer", {"k": 8, "projection": "learned", "share_kv": False}),
    ("linformer", {"k": 8, "projection": "conv", "share_kv": False}),
    ("performer", {"chunk_size": 16, "num_features": 64, "kernel": "softmax_hyp"}),
    ("performer", {"chunk_size": 16, "num_features": 64, "kernel": "relu", "orthogonal": False}),
    ("cosformer", {"horizon": 200, "chunk_size": 16}),
    ("linear_elu", {"chunk_size": 16, "recompute": False}),
    (
        "hybrid",
        {
            "window": 3,
            "local_heads": 1,
            "global_attention": {
                "_target_": "longseq.attention.performer.PerformerAttention",
                "_partial_": True,
                "num_features": 32,
                "seed": "${seed}",
            },
        },
    ),
]
CASES = [(name, SHRINK.get(name, {})) for name in NAMES] + VARIANTS
CASE_IDS = [
    name if i < len(NAMES) else f"{name}-variant{i - len(NAMES)}" for i, (name, _) in enumerate(CASES)
]

# Extra overrides for the 1M-token run: a small window (the local part costs O(seq·window)), one local
# head (that run has 2 heads), and the linear kernels in their default-sized chunks.
MILLION: dict[str, dict[str, object]] = {
    "hybrid": {"window": 4, "local_heads": 1},
    "performer": {"chunk_size": 16384, "num_features": 64},
    "linear_elu": {"chunk_size": 65536},
    "cosformer": {"chunk_size": 65536},
}

# bf16 autocast (bf16 q, k, v as an autocast encoder hands them over) vs the same kernel in float64 on
# the same bf16-rounded inputs: ‖out − ref‖ / ‖ref‖ over real tokens. Rounding the output to bf16 alone
# costs ~1.6e-3; measured totals at seq 64 were 1.6–1.8e-3 (Performer, linear_elu, cosFormer, hybrid),
# 2.1e-3 (sdpa, bf16 softmax), 2.8–3.0e-3 (Linformer: SDPA in bf16 on the projected keys). At 1M tokens
# the linear kernels measured 1.7–3.0e-3 against fp32 (fp32 accumulation of S and z).
BF16_REL_ERR_BUDGET = 5e-3

BATCH, HEADS, SEQ, HEAD_DIM, MAX_SEQ = 2, 4, 48, 16, 64


def make_factory(name: str, overrides: dict[str, object] | None = None) -> Callable[..., AttentionKernel]:
    """The Hydra ``_partial_`` factory of ``conf/model/attention/<name>.yaml`` with ``overrides``."""
    root = OmegaConf.create({"seed": 1234, "attention": OmegaConf.load(ATTENTION_DIR / f"{name}.yaml")})
    for key, value in (overrides or {}).items():
        root.attention[key] = value
    return instantiate(root.attention)


def build(name: str, overrides: dict[str, object] | None = None, **kwargs: int) -> AttentionKernel:
    """Instantiate a kernel; a kernel this machine cannot run (UserError, e.g. flash on CPU) is skipped."""
    kwargs = {"head_dim": HEAD_DIM, "max_seq_len": MAX_SEQ, "layer_idx": 0, **kwargs}
    try:
        return make_factory(name, overrides)(**kwargs)
    except UserError as err:
        pytest.skip(f"{name} cannot run here: {err}")


def qkv(
    dtype: torch.dtype = torch.float32, seed: int = 0, shape: tuple[int, ...] = (BATCH, HEADS, SEQ, HEAD_DIM)
):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3)]


def padding_masks() -> list[torch.Tensor]:
    """Padding at the end, at the start and in the middle; batch row 1 unpadded in the first."""
    end = torch.ones(BATCH, SEQ, dtype=torch.bool)
    end[0, -11:] = False
    start = torch.ones(BATCH, SEQ, dtype=torch.bool)
    start[:, :7] = False
    middle = torch.ones(BATCH, SEQ, dtype=torch.bool)
    middle[0, 20:30] = False
    middle[1, 3:5] = False
    return [end, start, middle]


def test_every_yaml_is_a_partial_kernel_config():
    assert {"sdpa", "flash", "performer", "linformer", "linear_elu", "cosformer", "hybrid"} <= set(NAMES)
    for name in NAMES:
        cfg = OmegaConf.load(ATTENTION_DIR / f"{name}.yaml")
        assert cfg.get("_partial_") is True and cfg.get("_target_"), name


@pytest.mark.parametrize("name", NAMES)
def test_defaults_build_and_keep_shape(name):
    kernel = build(name)
    assert isinstance(kernel, AttentionKernel)
    q, k, v = qkv()
    out = kernel(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=CASE_IDS)
def test_finite_gradients_for_inputs_and_parameters(name, overrides):
    kernel = build(name, overrides)
    q, k, v = (x.requires_grad_() for x in qkv())
    mask = padding_masks()[0]
    out = kernel(q, k, v, mask)
    assert out.shape == q.shape
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    for label, x in (("q", q), ("k", k), ("v", v)):
        assert x.grad is not None and torch.isfinite(x.grad).all(), f"{label}.grad"
        assert x.grad.abs().sum() > 0, f"{label}.grad is all zero"
    for pname, param in kernel.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=CASE_IDS)
def test_padding_invariance_float64(name, overrides):
    """Changing padded tokens' q, k, v leaves real tokens' outputs unchanged; an all-True mask is None."""
    kernel = build(name, overrides).double()
    q, k, v = qkv(torch.float64)
    assert torch.allclose(
        kernel(q, k, v, torch.ones(BATCH, SEQ, dtype=torch.bool)), kernel(q, k, v), rtol=0, atol=0
    )
    gen = torch.Generator().manual_seed(7)
    for mask in padding_masks():
        out = kernel(q, k, v, mask)
        pad = ~mask[:, None, :, None]
        q2, k2, v2 = (
            torch.where(pad, 5 * torch.randn(x.shape, generator=gen, dtype=x.dtype), x) for x in (q, k, v)
        )
        out2 = kernel(q2, k2, v2, mask)
        assert torch.isfinite(out).all() and torch.isfinite(out2).all()
        real = mask[:, None, :, None].expand_as(out)
        torch.testing.assert_close(out2[real], out[real], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=CASE_IDS)
def test_bf16_autocast_within_budget(name, overrides):
    kernel = build(name, overrides)
    q, k, v = (x.bfloat16() for x in qkv())
    mask = padding_masks()[0]
    reference = copy.deepcopy(kernel).double()(q.double(), k.double(), v.double(), mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernel(q, k, v, mask)
    assert out.dtype == torch.bfloat16
    real = mask[:, None, :, None].to(torch.float64)
    err = ((out.double() - reference) * real).norm() / (reference * real).norm()
    assert err < BF16_REL_ERR_BUDGET, f"{name}: bf16 relative error {err:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_million_tokens_bf16_finite_and_accurate(name):
    seq = 1 << 20
    factory_overrides = {**SHRINK.get(name, {}), **MILLION.get(name, {})}
    kernel = build(name, factory_overrides, head_dim=4, max_seq_len=seq)
    if kernel.quadratic:
        pytest.skip(f"{name} is quadratic: 1M tokens is out of its range by design")
    q, k, v = qkv(torch.bfloat16, shape=(1, 2, seq, 4))
    mask = torch.ones(1, seq, dtype=torch.bool)
    mask[0, -1000:] = False
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernel(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    # Not merely finite: as close to an fp32 run on the same (bf16-valued) inputs as at short lengths.
    with torch.no_grad():
        reference = kernel(q.float(), k.float(), v.float(), mask)[:, :, :-1000]
    err = (out[:, :, :-1000].float() - reference).norm() / reference.norm()
    assert err < BF16_REL_ERR_BUDGET, f"{name}: bf16 relative error {err:.2e} at 1M tokens"
