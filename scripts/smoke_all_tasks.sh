#!/usr/bin/env bash
# For each of the nine GLUE tasks: an eval-only run and a short train+eval run, offline, on the bundled model.
# Tasks without a train file in ../shared/glue use the documented offline protocols:
#   mnli: --train_split validation_mismatched (evaluates on validation_matched)
#   qqp, qnli: --train_split validation --split_dev 0.25
# Usage: scripts/smoke_all_tasks.sh [output_root]   (default runs/smoke); prints each run's eval metric keys.
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE_DIR=${GLUE_DIR:-../shared/glue}
root=${1:-runs/smoke}
common=(--glue_dir "$GLUE_DIR" --overwrite_output_dir --disable_tqdm True --max_eval_samples 64)
for task in cola sst2 mrpc stsb qqp mnli qnli rte wnli; do
  case $task in
    mnli) protocol=(--train_split validation_mismatched) ;;
    qqp|qnli) protocol=(--train_split validation --split_dev 0.25) ;;
    *) protocol=() ;;
  esac
  python run_glue.py --task_name $task --output_dir "$root/$task-eval" --do_eval "${common[@]}" > "$root-$task-eval.log" 2>&1 \
    || { echo "$task eval FAILED (see $root-$task-eval.log)"; exit 1; }
  python run_glue.py --task_name $task --output_dir "$root/$task-train" --do_train --do_eval "${protocol[@]}" \
    --max_train_samples 64 --num_train_epochs 1 --per_device_train_batch_size 16 "${common[@]}" > "$root-$task-train.log" 2>&1 \
    || { echo "$task train FAILED (see $root-$task-train.log)"; exit 1; }
  python - "$root/$task-eval" "$root/$task-train" <<'PY'
import json, sys
for out in sys.argv[1:]:
    results = json.load(open(f"{out}/all_results.json"))
    keys = sorted(k for k in results if k.startswith("eval_") and not k.startswith(("eval_runtime", "eval_samples", "eval_steps", "eval_model")))
    print(f"{out}: " + ", ".join(f"{k}={results[k]:.4f}" for k in keys))
PY
done
