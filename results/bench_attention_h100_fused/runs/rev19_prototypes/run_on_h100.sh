# Revision 19's device call (repository root; carry .whl). The call itself ran the same steps from a scratch folder,
# on files that mk_fused.py reproduces (kernel logic identical; the scratch files also had an environment switch).
P=results/bench_attention_h100_fused/runs
R=$P/rev19_prototypes
T=${TMPDIR:-/tmp}/rev19 && mkdir -p $T
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src; export TRITON_CACHE_DIR=$PWD/.triton_cache; export LONGSEQ_TRITON_TUNE=1
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
python3 $R/mk_fused.py $T/tl_fused.py 128
python3 $R/mk_fused.py $T/tl_fused64.py 64
echo "## 1. agreement with the tree and with the torch reference (bf16, GPU)"
timeout 200 python3 $P/rev18_prototypes/check_vs_tree.py $T/tl_fused.py 70001 attention
timeout 200 python3 $P/rev18_prototypes/check_vs_tree.py $T/tl_fused64.py 70001 attention
timeout 200 python3 $R/bf16_check.py $T/tl_fused.py 70001
echo "## 2. A/B at 1M"
timeout 480 python3 $P/rev18_prototypes/ab.py tree,$T/tl_fused.py,$T/tl_fused64.py
