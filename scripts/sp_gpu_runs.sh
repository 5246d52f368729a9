#!/usr/bin/env bash
# Sequence-parallel figures of results/ddp_h200/ (second call; see its README), on a 2-GPU machine:
# one 16M-token sequence split over 2 GPUs, the same on 1 GPU (OOM expected) and 8M on 1 GPU, then
# a short train.py run with model.sequence_parallel=2 on 1M-base windows of chr4 (with the sanity
# validation whose all-padding shard hung the first attempt).
# Usage: bash scripts/sp_gpu_runs.sh <output folder>
set -u
OUT=${1:?output folder}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
B=(scripts/bench_sequence_parallel.py --steps 2 --warmup 1 --out "$OUT/sp_bench.csv")
torchrun --standalone --nproc-per-node 2 "${B[@]}" --lengths 16777216 > "$OUT/sp_bench.log" 2>&1
python scripts/bench_sequence_parallel.py "${B[@]:1}" --lengths 16777216 8388608 >> "$OUT/sp_bench.log" 2>&1
timeout 120 python train.py trainer=ddp trainer.devices=2 model.sequence_parallel=2 model/attention=linear_elu \
    model.attention.impl=torch model.checkpoint_layers=true data.seq_len=1048576 data.batch_size=1 \
    data.eval_batch_size=1 trainer.max_steps=10 trainer.val_check_interval=10 trainer.limit_val_batches=1 \
    task.warmup_steps=2 callbacks.speed_monitor.log_every=5 trainer.enable_progress_bar=false test=false \
    logger=csv hydra.run.dir=/tmp/sp1m > "$OUT/sp_1m_train.log" 2>&1
cp /tmp/sp1m/summary.json "$OUT/sp_1m_train_summary.json" 2>/dev/null
cp /tmp/sp1m/csv/metrics.csv "$OUT/sp_1m_train_metrics.csv" 2>/dev/null
tail -n 4 "$OUT"/*.log
