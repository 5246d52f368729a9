#!/usr/bin/env bash
# The multi-GPU figures of results/ddp_h200/ (see its README), on a machine with 2 GPUs:
#   (a) data parallel: the default model (sdpa, 1024-base windows, width 128, 4 layers) on 1 GPU and
#       with trainer=ddp on 2, the same global batch (16 windows), a fixed number of steps;
#   (b) sequence parallel through train.py: linear_elu on 1M-base windows of chr4 split over 2 GPUs;
#   (c) scripts/bench_sequence_parallel.py: 4M-32M-token sequences on 1 GPU vs split over 2.
# Usage: bash scripts/ddp_gpu_runs.sh <output folder> [steps]
set -u
OUT=${1:?output folder}; STEPS=${2:-300}
mkdir -p "$OUT"; RUNS=/tmp/ddp_runs; rm -rf "$RUNS"
export PYTHONUNBUFFERED=1
COMMON=(trainer.enable_progress_bar=false test=false logger=csv global_batch_size=16 data.batch_size=8
        trainer.max_steps="$STEPS" trainer.val_check_interval="$STEPS" callbacks.speed_monitor.log_every=50)
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/dp_1gpu.log" 2>&1
python train.py trainer=gpu "${COMMON[@]}" hydra.run.dir=$RUNS/dp1 >> "$OUT/dp_1gpu.log" 2>&1
cp $RUNS/dp1/summary.json "$OUT/dp_1gpu_summary.json"
python train.py trainer=ddp trainer.devices=2 "${COMMON[@]}" hydra.run.dir=$RUNS/dp2 > "$OUT/dp_2gpu.log" 2>&1
cp $RUNS/dp2/summary.json "$OUT/dp_2gpu_summary.json"
python train.py trainer=ddp trainer.devices=2 model.sequence_parallel=2 model/attention=linear_elu \
    model.attention.impl=torch model.checkpoint_layers=true data.seq_len=1048576 data.batch_size=1 \
    data.eval_batch_size=1 trainer.max_steps=30 trainer.val_check_interval=30 trainer.limit_val_batches=1 \
    task.warmup_steps=5 callbacks.speed_monitor.log_every=5 trainer.enable_progress_bar=false test=false logger=csv \
    hydra.run.dir=$RUNS/sp1m > "$OUT/sp_1m_train.log" 2>&1
cp $RUNS/sp1m/summary.json "$OUT/sp_1m_train_summary.json"
python scripts/bench_sequence_parallel.py --lengths 4194304 8388608 16777216 33554432 --out "$OUT/sp_bench.csv" > "$OUT/sp_bench.log" 2>&1
torchrun --standalone --nproc-per-node 2 scripts/bench_sequence_parallel.py --lengths 8388608 16777216 \
    --out "$OUT/sp_bench.csv" >> "$OUT/sp_bench.log" 2>&1
tail -n 3 "$OUT"/*.log
