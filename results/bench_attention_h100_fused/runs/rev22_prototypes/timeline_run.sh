#!/usr/bin/env bash
# Device run: kernel timeline of FAVOR+ and elu+1 at 1M with the GPU's clocks and power logged.
set -u
export PYTHONPATH=$PWD/src TRITON_CACHE_DIR=$PWD/.triton_cache LONGSEQ_TRITON_TUNE=1
nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,TEMPERATURE > $OUT/smi_before.txt 2>&1
Q=timestamp,clocks.sm,clocks.mem,power.draw,enforced.power.limit,temperature.gpu,clocks_event_reasons.active,utilization.gpu
nvidia-smi --query-gpu=$Q --format=csv -lms 50 > $OUT/smi_log.csv 2>&1 &
SMI=$!
python -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
python scripts/profile_triton_linear.py --seq 1048576 --maps favor,elu --kernels --timeline 60 2>&1
echo "--- idle 5 s, then again (cold start of the clocks)"
sleep 5
python scripts/profile_triton_linear.py --seq 1048576 --maps favor --timeline 30 2>&1
kill $SMI
nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,TEMPERATURE > $OUT/smi_after.txt 2>&1
