# Device command of revision 17: the tree's FAVOR+ kernels under the image's Triton 3.6 and under another Triton
# release, alternating processes, two rounds each (rev16_prototypes/ab_favor_kernels.py); with --bench, then the
# benchmark at 1M for the three maps under both. Calls (a) and (b) ran two copies of these steps, one per release
# (now `ab_triton_release.sh 3.9.0` and `ab_triton_release.sh 3.7.1 --bench`); (b)'s bench output was piped through
# tail -6, which lost its FAVOR+ and 3.7.1 rows, so the CSVs now go to $OUT. This merged form was not run itself.
# Carry [".whl", ".triton-VERSION.tar.xz"] (from slim_triton.sh VERSION .triton-VERSION.tar.xz); run from the
# repository root.
set -o pipefail
ver=$1 new=/tmp/triton-$1
ab=results/bench_attention_h100_fused/runs/rev16_prototypes/ab_favor_kernels.py
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p "$new" && tar xJf ".triton-$ver.tar.xz" -C "$new" || exit 3
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
export LONGSEQ_TRITON_TUNE=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
# $1: tag, $2: a Triton folder put first on PYTHONPATH (/nonexistent: the image's own)
ab() { PYTHONPATH=$2:/tmp/site:$PWD/src TRITON_CACHE_DIR=/tmp/tc$1 timeout 250 python3 $ab tree 2>&1 | grep -v -i warn; }
bench() {
    PYTHONPATH=$2:/tmp/site:$PWD/src TRITON_CACHE_DIR=/tmp/tc$1 timeout 150 python3 scripts/bench_attention.py \
        --device cuda --lengths 1048576 --modes fwdbwd --mechanisms performer-triton,linear_elu-triton,cosformer-triton \
        --target-s 1.0 --max-reps 30 --out /tmp/b$1$3 2>&1 | grep -v -i warn | grep "triton fwdbwd"
    cp /tmp/b$1$3/bench_attention.csv $OUT/bench_$1$3.csv
}
PYTHONPATH=$new:/tmp/site python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
for round in a b; do
    echo "### 3.6 ($round)"; ab 36 /nonexistent | tee $OUT/r36$round.txt
    echo "### $ver ($round)"; ab "$ver" "$new" | tee "$OUT/r$ver$round.txt"
done
if [ "${2:-}" = --bench ]; then
    for round in a b; do
        echo "### bench 3.6 ($round)"; bench 36 /nonexistent $round
        echo "### bench $ver ($round)"; bench "$ver" "$new" $round
    done
fi
