#!/usr/bin/env bash
# Full fine-tuning of the bundled all-MiniLM-L6-v2 on the GLUE tasks whose train sets are in ../shared/glue.
# Usage: scripts/full_finetune_baselines.sh [task ...]   (default: rte mrpc stsb cola sst2)
# Each run writes runs/full/<task>/ (all_results.json, run_config.json) and its wall time to wall_seconds.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE_DIR=${GLUE_DIR:-../shared/glue}
tasks=("$@"); [ ${#tasks[@]} -gt 0 ] || tasks=(rte mrpc stsb cola sst2)
for task in "${tasks[@]}"; do
  epochs=3; [ "$task" = sst2 ] && epochs=${SST2_EPOCHS:-1}
  out=runs/full/$task
  start=$(date +%s)
  python run_glue.py --task_name "$task" --glue_dir "$GLUE_DIR" --output_dir "$out" --overwrite_output_dir \
    --do_train --do_eval --num_train_epochs "$epochs" --learning_rate 5e-5 --per_device_train_batch_size 32 \
    --warmup_ratio 0.06 --weight_decay 0.1 --max_seq_length 128 --seed 42 --logging_steps 50 --disable_tqdm True
  echo $(( $(date +%s) - start )) > "$out/wall_seconds.txt"
done
