"""Relative errors of the tree and of a candidate kernel file against the PyTorch path (fp32 on a GPU), bf16 inputs,
FAVOR+ 256 features, head_dim 64, no mask. Meant for the GPU (the interpreter does not emulate bf16 products).

usage: bf16_check.py FILE SEQ
"""
import importlib.util, sys
import torch
sys.path.insert(0, "src"); sys.path.insert(0, "tests")
path, seq = sys.argv[1], int(sys.argv[2])
dev = "cuda" if torch.cuda.is_available() else "cpu"
import test_triton_linear as T
case = ("favor256", "performer", {"num_features": 256}, 1, 2, seq, 64, False)
print("tree", ["%.2e" % e for e in T.relative_errors(case, dev, torch.bfloat16, 2, 128)], flush=True)
sp = importlib.util.spec_from_file_location("longseq.attention.triton_linear", path)
cand = importlib.util.module_from_spec(sp); sys.modules["longseq.attention.triton_linear"] = cand; sp.loader.exec_module(cand)
import longseq.attention as la; la.triton_linear = cand
print("cand", ["%.2e" % e for e in T.relative_errors(case, dev, torch.bfloat16, 2, 128)], flush=True)
