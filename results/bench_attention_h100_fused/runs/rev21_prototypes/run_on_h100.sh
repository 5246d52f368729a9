# Revision 21 device call: CUDA dS/dz prototype against the tree (run from the repository root).
[ -f results/bench_attention_h100_fused/runs/rev21_prototypes/favor_dstate.cubin ] || bash results/bench_attention_h100_fused/runs/rev21_prototypes/build_cubin.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src; export TRITON_CACHE_DIR=$PWD/.triton_cache; export LONGSEQ_TRITON_TUNE=1
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
TIMING=1 DIAG=${DIAG:-0} timeout 420 python3 results/bench_attention_h100_fused/runs/rev21_prototypes/ds_check.py 2>&1 | grep -v "Warn\|warn"
echo "rc ${PIPESTATUS[0]}"
