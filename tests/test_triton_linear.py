"""The fused Triton linear-attention kernels against the PyTorch path (the reference).

On CPU the kernels run in Triton's interpreter: ``TRITON_INTERPRET=1`` must be set before ``triton``
is imported, so the comparisons run in one subprocess (this file run as a script) that prints the
relative errors of every case as JSON; the tests then check them. Small sizes, fp32, fresh random
inputs; forward and the gradients of q, k, v; with and without padding (an all-padding row too),
non-power-of-two lengths and feature counts, several sequence chunks (the partial-state combine and
the online key stabiliser). The interpreter runs fp32 only: with Triton 3.7 it returns garbage for
bf16 tensors on CPU (values off by orders of magnitude). The kernels' bf16 branches are still run
there, on fp32 inputs (cases ``*_tc``); bf16 itself is checked on a GPU (marker ``gpu``), where the
same comparisons run compiled, in fp32 and bf16, at longer lengths.
``LONGSEQ_TRITON_TUNE=0`` (set before the run) skips the autotuner there: otherwise every new length
times 8 (16 for the kernels with a register prefetch) candidate configurations of each kernel, twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton")

# (name, mechanism, options, batch, heads, seq, head_dim, masked)
CASES = [
    ("elu", "linear_elu", {}, 2, 2, 150, 16, False),
    ("elu_mask", "linear_elu", {}, 2, 2, 150, 32, True),
    ("cos", "cosformer", {"horizon": 400}, 1, 3, 97, 16, False),
    ("cos_mask", "cosformer", {}, 2, 2, 130, 16, True),
    ("favor_pos", "performer", {"num_features": 32}, 2, 2, 150, 16, False),
    ("favor_pos_mask", "performer", {"num_features": 48, "eps": 1e-3}, 2, 2, 150, 16, True),
    ("favor_hyp_mask", "performer", {"num_features": 80, "kernel": "softmax_hyp"}, 2, 1, 77, 32, True),
]
# The elu/cos cases: their bf16/fp16 paths are the loop kernels, run with and without prefetch.
LOOP_CASES = [c for c in CASES if c[1] in ("linear_elu", "cosformer")]
CHUNK = 64  # tokens per chunk of the sequence reductions in the interpreter: several chunks per case


def build(mechanism: str, options: dict, impl: str, head_dim: int, seq: int) -> torch.nn.Module:
    from longseq.attention.cosformer import CosformerAttention
    from longseq.attention.linear_elu import LinearEluAttention
    from longseq.attention.performer import PerformerAttention

    cls = {"linear_elu": LinearEluAttention, "cosformer": CosformerAttention, "performer": PerformerAttention}
    return cls[mechanism](head_dim=head_dim, max_seq_len=seq, impl=impl, **options)


def inputs(batch: int, heads: int, seq: int, head_dim: int, masked: bool, seed: int, device: str, dtype):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, go = (torch.randn(batch, heads, seq, head_dim, generator=gen) for _ in range(4))
    mask = None
    if masked:
        mask = torch.rand(batch, seq, generator=gen) > 0.3
        mask[0, -seq // 3 :] = False  # a padded tail
        if batch > 1:
            mask[-1] = False  # and a row with no real token at all
    to = {"device": device, "dtype": dtype}
    q, k, v = (x.to(**to).requires_grad_() for x in (q, k, v))
    return q, k, v, go.to(**to), None if mask is None else mask.to(device)


def relative_errors(case: tuple, device: str, dtype, seed: int, chunk_tokens: int | None) -> list[float]:
    """max|triton − torch| / max|torch| for the output and the gradients of q, k, v."""
    from longseq.attention import triton_linear

    _, mechanism, options, batch, heads, seq, head_dim, masked = case
    q, k, v, go, mask = inputs(batch, heads, seq, head_dim, masked, seed, device, dtype)
    ref_kernel = build(mechanism, options, "torch", head_dim, seq).to(device)
    fused_kernel = build(mechanism, options, "triton", head_dim, seq).to(device)
    # The reference in fp32 (fp64 on CPU) from the same inputs: what the fused path must approach.
    ref_dtype = torch.float64 if device == "cpu" else torch.float32
    qr, kr, vr = (x.detach().to(ref_dtype).requires_grad_() for x in (q, k, v))
    ref = ref_kernel(qr, kr, vr, mask)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), go.to(ref_dtype))
    old = triton_linear.DEFAULT_CHUNK_TOKENS
    triton_linear.DEFAULT_CHUNK_TOKENS = chunk_tokens
    try:
        out = fused_kernel(q, k, v, mask)
        grads = torch.autograd.grad(out, (q, k, v), go)
    finally:
        triton_linear.DEFAULT_CHUNK_TOKENS = old
    assert fused_kernel.last_backend == "triton" and ref_kernel.last_backend == "torch"
    pairs = [(out, ref), *zip(grads, ref_grads, strict=True)]
    return [
        float((a.detach().double() - b.detach().double()).abs().max() / b.detach().double().abs().max().clamp_min(1e-30))
        for a, b in pairs
    ]


def sharded_error(device: str) -> float:
    """FAVOR+ state over two sequence shards (the key max MAX-reduced, the states summed, as sequence
    parallelism does) against the whole sequence, masked; relative error of the output."""
    from longseq.attention import triton_linear as tlin
    from longseq.attention.linear_core import real_token_count

    q, k, v, _, mask = inputs(2, 2, 160, 16, True, 7, device, torch.float32)
    mask[0, :90] = False  # the first shard of row 0 is all padding: its max must not count
    # Large keys: every logit is far below 0 (about −1500), so a stabiliser taken as 0 anywhere
    # (e.g. for the all-padding shard) would underflow every feature.
    k = (k.detach() * 30).requires_grad_()
    proj = build("performer", {"num_features": 32}, "torch", 16, 160).projection.to(device)
    count = real_token_count(mask, 160, torch.float32)
    whole = tlin.FeatureSpec("favor", projection=proj, eps=1e-3)
    s, z = tlin.fused_state(k, v, mask, count, whole, chunk_tokens=CHUNK)
    expected = tlin.fused_readout(q, s, z, whole, chunk_tokens=CHUNK)
    halves = [slice(0, 80), slice(80, 160)]
    maxima = [tlin._StateFn.apply(k[:, :, h], v[:, :, h], mask[:, h], whole, CHUNK, 0, count)[2] for h in halves]
    global_max = torch.maximum(*maxima)
    spec = tlin.FeatureSpec("favor", projection=proj, eps=1e-3, key_max_reduce=lambda m: global_max)
    states = [tlin.fused_state(k[:, :, h], v[:, :, h], mask[:, h], count, spec, chunk_tokens=CHUNK) for h in halves]
    s2, z2 = states[0][0] + states[1][0], states[0][1] + states[1][1]
    got = torch.cat([tlin.fused_readout(q[:, :, h], s2, z2, spec, chunk_tokens=CHUNK) for h in halves], dim=2)
    return float((got - expected).detach().abs().max() / expected.detach().abs().max())


def checkpointed_error(device: str) -> float:
    """Largest relative difference of the q, k, v gradients with the kernel under activation
    checkpointing (``torch.utils.checkpoint``, which allows each saved tensor one unpack) against
    without, over every feature map."""
    from torch.utils.checkpoint import checkpoint

    worst = 0.0
    for mechanism, options in (("linear_elu", {}), ("cosformer", {}), ("performer", {"num_features": 32})):
        q, k, v, go, mask = inputs(1, 2, 100, 16, True, 3, device, torch.float32)
        kernel = build(mechanism, options, "triton", 16, 100).to(device)
        plain = torch.autograd.grad(kernel(q, k, v, mask), (q, k, v), go)
        out = checkpoint(kernel, q, k, v, mask, use_reentrant=False)
        again = torch.autograd.grad(out, (q, k, v), go)
        for a, b in zip(again, plain, strict=True):
            worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    return worst


def negative_logits_error(device: str) -> float:
    """FAVOR+ with 48 features (padded to 64 in the one-block read-out forward) where every query
    logit is negative: a padded feature left at logit 0 would become the row max and change the eps
    term's weight. Largest relative error of the output and q's gradient against the reference."""
    q, k, v, go, mask = inputs(1, 2, 90, 16, False, 11, device, torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(12)
    proj = torch.randn(48, 16, generator=gen).abs().to(device)  # positive rows ...
    q = (-3 * q.detach().abs()).requires_grad_()  # ... against negative queries: w·q < 0 everywhere
    errors = []
    outs = {}
    for impl in ("torch", "triton"):
        kernel = build("performer", {"num_features": 48, "eps": 1e-3}, impl, 16, 90).to(device)
        kernel.projection.copy_(proj)
        qi, ki, vi = (x.detach().double() if impl == "torch" else x.detach() for x in (q, k, v))
        qi.requires_grad_()
        out = kernel(qi, ki, vi, mask)
        outs[impl] = (out.detach(), torch.autograd.grad(out, qi, go.to(out.dtype))[0])
    for a, b in zip(outs["triton"], outs["torch"], strict=True):
        errors.append(float((a.double() - b).abs().max() / b.abs().max()))
    return max(errors)


def combine_error(device: str) -> float:
    """The partial-state combine with more chunks than it sums per step (a ragged last step), every
    option on (per-chunk rescale to the key max, a chunk with no real key, the FAVOR+ eps part,
    per-batch counts), against the same sums in fp64; largest relative error of S and z."""
    from longseq.attention import triton_linear as tlin

    gen = torch.Generator(device="cpu").manual_seed(5)
    batch, heads, chunks, m, d = 2, 2, 37, 16, 64
    bh = batch * heads
    s_part, z_part = torch.randn(bh, chunks, m, d, generator=gen), torch.rand(bh, chunks, m, generator=gen)
    m_part, vs_part = torch.randn(bh, chunks, m, generator=gen) * 4, torch.randn(bh, 21, d, generator=gen)
    s_part[1, 5], z_part[1, 5], m_part[1, 5] = 0.0, 0.0, tlin.NEG_BIG  # a chunk of padding only
    kmax = m_part.amax(dim=(1, 2))
    count, nreal = torch.tensor([90.0, 70.0]), torch.tensor([80.0, 60.0])
    eps, c = 1e-2, 0.25
    s, z = tlin._combine((s_part, z_part, m_part), bh, heads, m, d, torch.device(device), kmax=kmax,
                         count=count, nreal=nreal, eps=eps, c=c, vs_part=vs_part)
    scale = torch.exp2(m_part.double() - kmax.double()[:, None, None])
    per_row = count.double().repeat_interleave(heads)
    s_ref = c * ((s_part.double() * scale[..., None]).sum(1) + eps * vs_part.double().sum(1)[:, None, :])
    z_ref = c * ((z_part.double() * scale).sum(1) + eps * nreal.double().repeat_interleave(heads)[:, None])
    s_ref, z_ref = s_ref / per_row[:, None, None], z_ref / per_row[:, None]
    return max(float((s.double() - s_ref).abs().max() / s_ref.abs().max()),
               float((z.double() - z_ref).abs().max() / z_ref.abs().max()))


def tensor_core_path_errors() -> dict:
    """The cases again with fp32 inputs sent down the bf16/fp16 branches of the kernels (``ieee`` off
    in the launch plan): the interpreter cannot run bf16, and those branches differ from the fp32 ones
    (the elu/cos kernels that walk chunks of tiles, with and without PREFETCH; cosFormer's interleaved
    features, tl.join/tl.split), so this is CI's check of their logic. The interpreter's dots are
    exact fp32 products whatever the precision flag."""
    import dataclasses

    from longseq.attention import triton_linear

    plan, configs = triton_linear._plan, triton_linear._configs
    triton_linear._plan = lambda spec, x: dataclasses.replace(plan(spec, x), ieee=False)
    try:
        errors = {f"{case[0]}_tc": relative_errors(case, "cpu", torch.float32, 2, CHUNK) for case in CASES}
        errors["favor_negative_logits_tc"] = [negative_logits_error("cpu")]
        # The interpreter's configuration prefetches; once more without.
        triton_linear._configs = lambda loop: [
            triton.Config({"BLOCK_N": 32, "PREFETCH": 0} if loop else {"BLOCK_N": 64}, num_warps=4, num_stages=1)
        ]
        for kernel in vars(triton_linear).values():  # forget the configurations chosen above
            if isinstance(kernel, triton_linear._Tuned):
                kernel.best.clear()
        for case in LOOP_CASES:
            errors[f"{case[0]}_tc0"] = relative_errors(case, "cpu", torch.float32, 3, CHUNK)
        return errors
    finally:
        triton_linear._plan, triton_linear._configs = plan, configs


def interpreter_results() -> dict:
    errors = {case[0]: relative_errors(case, "cpu", torch.float32, 1, CHUNK) for case in CASES}
    errors.update(tensor_core_path_errors())
    errors["sharded"] = [sharded_error("cpu")]
    errors["checkpointed"] = [checkpointed_error("cpu")]
    errors["combine"] = [combine_error("cpu")]
    return errors


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [c[0] + p for p in ("", "_tc") for c in CASES] + [c[0] + "_tc0" for c in LOOP_CASES])
def test_interpreter_matches_torch(interpreted, name):
    # fp32 kernels against the fp64 reference, through the fp32 (IEEE) branches and the tensor-core
    # ones ("_tc", "_tc0" without prefetch): only summation order differs.
    out_err, *grad_errs = interpreted[name]
    assert out_err < 1e-5, f"{name}: forward relative error {out_err:.2e}"
    for which, err in zip("qkv", grad_errs, strict=True):
        assert err < 1e-5, f"{name}: d{which} relative error {err:.2e}"


def test_interpreter_favor_read_out_with_every_logit_negative(interpreted):
    assert interpreted["favor_negative_logits_tc"][0] < 1e-5


def test_interpreter_sharded_state_with_key_max_reduce(interpreted):
    assert interpreted["sharded"][0] < 1e-5


def test_interpreter_combine_of_many_chunks(interpreted):
    assert interpreted["combine"][0] < 1e-5


def test_interpreter_backward_under_activation_checkpointing(interpreted):
    # Recomputed forward, same kernels: the gradients agree up to summation order (none here).
    assert interpreted["checkpointed"][0] < 1e-6


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    from longseq.errors import UserError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kernel = build("linear_elu", {}, "triton", 16, 32)
    q = torch.randn(1, 1, 32, 16)
    with pytest.raises(UserError, match="TRITON_INTERPRET=1"):
        kernel(q, q, q)
    auto = build("performer", {"num_features": 32}, "auto", 16, 32)
    auto(q, q, q)
    assert auto.last_backend == "torch"


def test_bad_impl_and_unsupported_cases_are_clear_errors():
    from longseq.attention import triton_linear
    from longseq.errors import UserError

    with pytest.raises(UserError, match="impl"):
        build("cosformer", {}, "cuda", 16, 32)
    assert triton_linear.unsupported_reason("elu", 24) is not None
    assert triton_linear.unsupported_reason("favor", 64, 40) is not None
    assert triton_linear.unsupported_reason("favor", 64, 48) is None


def test_cached_kernel_rows_follow_redraws_and_new_modules():
    # The fused path caches the scaled projection; a redraw (in place) or another module's buffer
    # must never be served stale rows.
    from longseq.attention import triton_linear

    x = torch.zeros(1, 1, 4, 16)
    kernel = build("performer", {"num_features": 32}, "triton", 16, 32)
    spec = lambda k: triton_linear.FeatureSpec("favor", projection=k.projection)  # noqa: E731
    first = triton_linear._favor_rows(spec(kernel), x).clone()
    assert torch.equal(triton_linear._favor_rows(spec(kernel), x), first)
    kernel.redraw_features()
    assert not torch.equal(triton_linear._favor_rows(spec(kernel), x), first)
    other = build("performer", {"num_features": 32, "seed": 5}, "triton", 16, 32)
    expected = other.projection * (16**-0.25 * triton_linear.LOG2E)
    torch.testing.assert_close(triton_linear._favor_rows(spec(other), x), expected)


def test_kernels_run_with_autocast_off_and_skip_the_context_when_it_is_off():
    # The autograd functions must see autocast off (their dtypes are explicit); when it is already
    # off the context is skipped, saving host time before the first launch of an eager step.
    from longseq.attention import triton_linear

    x = torch.zeros(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        with triton_linear._autocast_off(x):
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")
    assert not isinstance(triton_linear._autocast_off(x), torch.autocast)


GPU_CASES = [
    ("elu", "linear_elu", {}, 2, 4, 4113, 64, True),
    ("cos", "cosformer", {}, 1, 4, 5000, 64, True),
    ("favor_pos", "performer", {"num_features": 256}, 2, 4, 4113, 64, True),
    ("favor_hyp", "performer", {"num_features": 128, "kernel": "softmax_hyp"}, 1, 8, 3000, 32, False),
    ("elu_128", "linear_elu", {}, 1, 2, 2049, 128, False),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_gpu_matches_torch(case, dtype):
    errors = relative_errors(case, "cuda", dtype, 3, None)
    # fp32: IEEE dots, only summation order differs. bf16: inputs, feature tiles and states are
    # rounded to bf16 as tensor-core operands (3 significant digits), accumulation in fp32.
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert max(errors) < tol, f"{case[0]} {dtype}: relative errors out/dq/dk/dv {errors}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", GPU_CASES[:3], ids=[c[0] for c in GPU_CASES[:3]])
def test_gpu_runs_are_bitwise_reproducible(case):
    # No atomics anywhere, so two runs on the same inputs must agree bit for bit; a race in a kernel
    # shows up here first (the FAVOR+ state forward had one under Triton 3.6's software pipelining
    # while it also summed v in its loop).
    _, mechanism, options, batch, heads, seq, head_dim, _ = case
    q, k, v, go, mask = inputs(batch, heads, seq, head_dim, True, 5, "cuda", torch.bfloat16)
    kernel = build(mechanism, options, "triton", head_dim, seq).to("cuda")
    for padding in (None, mask):  # unmasked runs take the whole-tile loops, masked ones the masked loops
        runs = []
        for _ in range(3):
            out = kernel(q, k, v, padding)
            runs.append((out.detach(), *torch.autograd.grad(out, (q, k, v), go)))
        for again in runs[1:]:
            for name, a, b in zip(("out", "dq", "dk", "dv"), again, runs[0], strict=True):
                assert torch.equal(a, b), f"{case[0]} (mask: {padding is not None}): {name} differs between identical runs"


if __name__ == "__main__":
    # Interpreter run (TRITON_INTERPRET=1 set by the fixture before triton is imported).
    sys.path.insert(0, str(ROOT / "src"))
    torch.set_num_threads(1)
    print(json.dumps(interpreter_results()))
