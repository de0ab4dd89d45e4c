#!/usr/bin/env bash
# One GLUE run with the paper's defaults: scripts/glue.sh TASK METHOD [extra run_glue.py flags...]
#   TASK: cola sst2 mrpc stsb qqp mnli qnli rte wnli;  METHOD: a --method value, e.g. full, probe, lora@5, adapter@2
# Defaults (the sweeps' own, from peftlab/sweep.py run_args): 3 epochs, batch 32, warm-up 0.06, weight decay 0.1,
# seed 42, max length 128; learning rate 5e-5 for full fine-tuning and 2e-3 (method and head) for frozen-backbone
# methods. Later flags override these.
# MNLI, QQP and QNLI use the offline protocols (README) unless you pass --train_split yourself.
# Output: $OUT_DIR if set, else runs/<task>/<method>; a run whose all_results.json exists is skipped.
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:?usage: scripts/glue.sh TASK METHOD [flags...]}
method=${2:?usage: scripts/glue.sh TASK METHOD [flags...]}
shift 2
out=${OUT_DIR:-runs/$task/${method//[@+,]/_}}
if [ -f "$out/all_results.json" ]; then echo "skip $out (finished)"; exit 0; fi
no_protocol=(); case " $* " in *" --train_split "*) no_protocol=(--no_protocol) ;; esac
defaults=$(python -m peftlab.sweep "$task" "$method" "${no_protocol[@]}")  # the sweeps' defaults (peftlab/sweep.py)
mapfile -t defaults <<< "$defaults"
command=(python run_glue.py "${defaults[@]}" --glue_dir "${GLUE_DIR:-../shared/glue}" --output_dir "$out" "$@")
if [ -n "${DRY_RUN:-}" ]; then echo "${command[*]}"; exit 0; fi
exec "${command[@]}"
