"""A kernel file's FAVOR+ (256 features, head_dim 64, with and without a padding mask) through its bf16/fp16 branches
with fp32 inputs (the launch plan's ieee flag off), against the fp64 PyTorch path, on the CPU under TRITON_INTERPRET=1,
where the products are exact: logic errors show, rounding does not. The tests' tensor-core check, for one file.

usage: TRITON_INTERPRET=1 tc_check.py FILE [SEQ]
"""
import dataclasses
import importlib.util
import pathlib
import sys

import torch

root = pathlib.Path(__file__).resolve().parents[4]
sys.path[:0] = [str(root / "src"), str(root / "tests")]
spec_ = importlib.util.spec_from_file_location("longseq.attention.triton_linear", sys.argv[1])
cand = importlib.util.module_from_spec(spec_)
sys.modules["longseq.attention.triton_linear"] = cand  # what the attention modules import at call time
spec_.loader.exec_module(cand)
import longseq.attention as la  # noqa: E402

la.triton_linear = cand
import test_triton_linear as T  # noqa: E402

plan = cand._plan
cand._plan = lambda spec, x: dataclasses.replace(plan(spec, x), ieee=False)
seq = int(sys.argv[2]) if len(sys.argv) > 2 else 150
for masked in (False, True):
    case = ("favor256", "performer", {"num_features": 256}, 2, 2, seq, 64, masked)
    errs = T.relative_errors(case, "cpu", torch.float32, 2, T.CHUNK)
    print(f"favor 256 features, seq {seq}, mask {masked}: rel err (out, dq, dk, dv) " + ", ".join(f"{e:.2e}" for e in errs), flush=True)
