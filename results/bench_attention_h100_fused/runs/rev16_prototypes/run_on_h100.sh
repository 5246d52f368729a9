# Revision 16 device call (run from the repository root on the lent H100; .whl holds the hydra/omegaconf/... wheels).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src; export TRITON_CACHE_DIR=$PWD/.triton_cache; export LONGSEQ_TRITON_TUNE=1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
run() { echo "## $*"; env "$@" timeout 150 python3 results/bench_attention_h100_fused/runs/rev16_prototypes/gl_pingpong_check.py 2>&1 | grep -v "Warn\|warn" | tail -8; echo "rc ${PIPESTATUS[0]}"; }
run PP_BF=32 PP_PING=1 TIMING=1
run PP_BF=32 PP_PING=0 TIMING=1
run PP_BF=32 PP_PING=1 PP_MASK=1
run PP_BF=16 PP_PING=1 TIMING=1
