#!/usr/bin/env bash
# Device call of revision 23: cuDNN and FlashAttention-2 on FAVOR+'s two attention shapes at 1M tokens,
# alternating with the Triton FAVOR+ pass, with clocks and power logged beside it.
set -u
export PYTHONPATH=$PWD/src TRITON_CACHE_DIR=$PWD/.triton_cache
Q=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active,utilization.gpu
nvidia-smi --query-gpu=$Q --format=csv -lms 50 > $OUT/rev23_smi.csv 2>&1 &
SMI=$!
python results/bench_attention_h100_fused/runs/rev23_prototypes/sdpa_favor_shapes.py --out $OUT/rev23_sdpa.json 2>&1 \
  | grep -v "Warn\|warn_once" | tee $OUT/rev23_sdpa.log
kill $SMI
gzip -9 $OUT/rev23_smi.csv
