#!/usr/bin/env bash
# Device run 2: the card's tensor ceiling at its power cap (cuBLAS), a long FAVOR+ timeline, and the
# benchmark's own 1M figures (eager and graphed) on this machine, with clocks and power logged.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src TRITON_CACHE_DIR=$PWD/.triton_cache LONGSEQ_TRITON_TUNE=1 MPLBACKEND=Agg
Q=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active,utilization.gpu
nvidia-smi --query-gpu=$Q --format=csv -lms 20 > $OUT/smi_log2.csv 2>&1 &
SMI=$!
echo "=== cuBLAS bf16 8192^3, random operands, 3 s back to back"
python - <<'PY'
import time, torch
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3): a @ b
torch.cuda.synchronize()
ev, t0 = [], time.perf_counter()
while time.perf_counter() - t0 < 3.0:
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); a @ b; e.record(); ev.append((s, e))
    if len(ev) % 50 == 0: torch.cuda.synchronize()
torch.cuda.synchronize()
ms = [s.elapsed_time(e) for s, e in ev]
tf = lambda t: 2 * 8192**3 / (t * 1e-3) / 1e12
n = len(ms)
import statistics as st
print(f"cublas products {n}: first 20 median {tf(st.median(ms[:20])):.0f} TFLOP/s, last half median {tf(st.median(ms[n//2:])):.0f} TFLOP/s")
PY
sleep 2
echo "=== FAVOR+ timeline, 200 passes"
python scripts/profile_triton_linear.py --seq 1048576 --maps favor --timeline 200 2>&1 | grep -v "first \|Warn\|warn_once"
sleep 2
echo "=== benchmark, eager"
python scripts/bench_attention.py --device cuda --lengths 1048576 --modes fwdbwd \
  --mechanisms performer-triton,linear_elu-triton,cosformer-triton --budget-s 5 --target-s 0.2 --max-reps 20 --out /tmp/bench_eager 2>&1 | tail -8; cp /tmp/bench_eager/*.json $OUT/eager.json
echo "=== benchmark, graphed"
python scripts/bench_attention.py --device cuda --cuda-graph --lengths 1048576 --modes fwdbwd \
  --mechanisms performer-triton --budget-s 5 --target-s 0.2 --max-reps 20 --out /tmp/bench_graph 2>&1 | tail -5; cp /tmp/bench_graph/*.json $OUT/graph.json
kill $SMI
