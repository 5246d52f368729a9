# Device command of revision 17 (a): the tree under the image's Triton 3.6 and under Triton 3.9.0, alternating processes.
# Carry [".whl", ".t39.tar.xz"] (.t39.tar.xz from slim_triton.sh 3.9.0 .t39.tar.xz); run from the repository root.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/t39 && tar xJf .t39.tar.xz -C /tmp/t39 || exit 3
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
export LONGSEQ_TRITON_TUNE=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
r36() { PYTHONPATH=/tmp/site:$PWD/src TRITON_CACHE_DIR=/tmp/tc36 timeout 200 python3 results/bench_attention_h100_fused/runs/rev16_prototypes/ab_favor_kernels.py tree 2>&1 | grep -v -i warn; }
r39() { PYTHONPATH=/tmp/t39:/tmp/site:$PWD/src TRITON_CACHE_DIR=/tmp/tc39 timeout 250 python3 results/bench_attention_h100_fused/runs/rev16_prototypes/ab_favor_kernels.py tree 2>&1 | grep -v -i warn; }
PYTHONPATH=/tmp/t39:/tmp/site python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
echo "### 3.6 (a)"; r36 | tee $OUT/r36a.txt
echo "### 3.9 (a)"; r39 | tee $OUT/r39a.txt
echo "### 3.6 (b)"; r36 | tee $OUT/r36b.txt
echo "### 3.9 (b)"; r39 | tee $OUT/r39b.txt
