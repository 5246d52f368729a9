# Device command of revision 17 (b): the same against Triton 3.7.1 (what torch 2.13, the set-up pin, installs), then the
# benchmark at 1M for the three maps (its tail -6 kept only the last lines: the FAVOR+ row of the bench was lost).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/t37 && tar xJf .t37.tar.xz -C /tmp/t37 || exit 3
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
export LONGSEQ_TRITON_TUNE=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
r36() { PYTHONPATH=/tmp/site:$PWD/src TRITON_CACHE_DIR=/tmp/tc36 timeout 200 python3 results/bench_attention_h100_fused/runs/rev16_prototypes/ab_favor_kernels.py tree 2>&1 | grep -v -i warn; }
r37() { PYTHONPATH=/tmp/t37:/tmp/site:$PWD/src TRITON_CACHE_DIR=/tmp/tc37 timeout 250 python3 results/bench_attention_h100_fused/runs/rev16_prototypes/ab_favor_kernels.py tree 2>&1 | grep -v -i warn; }
PYTHONPATH=/tmp/t37:/tmp/site python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
echo "### 3.6 (a)"; r36 | tee $OUT/r36a.txt
echo "### 3.7.1 (a)"; r37 | tee $OUT/r37a.txt
echo "### 3.6 (b)"; r36 | tee $OUT/r36b.txt
echo "### 3.7.1 (b)"; r37 | tee $OUT/r37b.txt
b() { echo "### bench $1"; PYTHONPATH=$2:/tmp/site:$PWD/src TRITON_CACHE_DIR=/tmp/tc$1 timeout 150 python3 scripts/bench_attention.py --device cuda --lengths 1048576 --modes fwdbwd --mechanisms performer-triton,linear_elu-triton,cosformer-triton --target-s 1.0 --max-reps 30 --out /tmp/b$1 2>&1 | grep -v -i warn | tail -6; }
b 36 /nonexistent
b 37 /tmp/t37
b 36 /nonexistent
b 37 /tmp/t37
