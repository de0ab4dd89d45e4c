#!/usr/bin/env bash
# One GLUE run with the paper's defaults: scripts/glue.sh TASK METHOD [extra run_glue.py flags...]
#   TASK: cola sst2 mrpc stsb qqp mnli qnli rte wnli;  METHOD: a --method value, e.g. full, probe, lora@5, adapter@2
# Defaults: 3 epochs, batch 32, warm-up 0.06, weight decay 0.1, seed 42, max length 128; learning rate 5e-5 for
# full fine-tuning and 2e-3 (method and head) for frozen-backbone methods. Later flags override these.
# MNLI, QQP and QNLI use the offline protocols (README) unless you pass --train_split yourself.
# Output: $OUT_DIR if set, else runs/<task>/<method>; a run whose all_results.json exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:?usage: scripts/glue.sh TASK METHOD [flags...]}
method=${2:?usage: scripts/glue.sh TASK METHOD [flags...]}
shift 2
out=${OUT_DIR:-runs/$task/${method//[@+,]/_}}
if [ -f "$out/all_results.json" ]; then echo "skip $out (finished)"; exit 0; fi
lr=2e-3; [ "${method%%[@+]*}" = full ] && lr=5e-5
protocol=()
case " $* " in *" --train_split "*) ;; *)
  case $task in
    mnli) protocol=(--train_split validation_mismatched) ;;
    qqp|qnli) protocol=(--train_split validation --split_dev 0.25) ;;
  esac ;;
esac
exec python run_glue.py --task_name "$task" --method "$method" --glue_dir "${GLUE_DIR:-../shared/glue}" \
  --output_dir "$out" --overwrite_output_dir --do_train --do_eval "${protocol[@]}" \
  --num_train_epochs 3 --per_device_train_batch_size 32 --learning_rate $lr --head_learning_rate $lr \
  --warmup_ratio 0.06 --weight_decay 0.1 --max_seq_length 128 --seed 42 --logging_steps 50 --disable_tqdm True "$@"
