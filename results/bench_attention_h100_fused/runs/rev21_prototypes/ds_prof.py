"""One profiled launch each of the tree's dS/dz kernel (tuned first, outside the profiled range) and the CUDA
prototype (mt2 and mt2_nods, 48 chunks) at 1M tokens; run under ncu --profile-from-start off."""
import os, sys
import torch
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ds_check as dc  # builds the kernels; its module-level runs are guarded below

dc.run(1, 8, 1 << 20, False)
grid, args, kw = dc.rec["_favor_readout_bwd_dstate_kernel"]
torch.cuda.synchronize()
torch.cuda.profiler.start()
dc.tl_mod._favor_readout_bwd_dstate_kernel.orig[grid](*args, **kw)
dc.cuda_ds("mt2", args, 48)
dc.cuda_ds("mt2_nods", args, 48)
torch.cuda.synchronize()
torch.cuda.profiler.stop()
