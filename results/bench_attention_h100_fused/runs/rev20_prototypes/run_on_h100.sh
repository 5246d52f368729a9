# Revision 20's two device calls (repository root; carry .whl and a scratch folder $S holding base.py = the tree at
# b37341a, wide.py = base.py with (c)'s candidate line, knob.py = base.py with the knob alone, chunk_sweep.py).
# Call 1 ran on the tree with sv_programs_chunk_knob.patch applied; call 2 on the tree at b37341a.
P=results/bench_attention_h100_fused/runs
S=${S:-.gpuscratch/rev20}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src; export TRITON_CACHE_DIR=$PWD/.triton_cache; export LONGSEQ_TRITON_TUNE=1
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
if [ "$1" = 1 ]; then
  timeout 280 python3 $P/rev18_prototypes/ab.py $S/base.py,tree
  timeout 290 python3 $S/chunk_sweep.py favor 2,3,4,6,8,12
else
  timeout 330 python3 $P/rev18_prototypes/ab.py tree,$S/wide.py
  CAND=$S/knob.py timeout 250 python3 $S/chunk_sweep.py favor 2,4,6,8
fi
