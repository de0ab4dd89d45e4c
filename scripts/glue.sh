#!/usr/bin/env bash
# One GLUE run under a named protocol: scripts/glue.sh TASK METHOD [extra run_glue.py flags...]
#   TASK: cola sst2 mrpc stsb qqp mnli qnli rte wnli;  METHOD: a --method value, e.g. full, probe, lora@5, adapter@2
# PROTOCOL=paper (default): the paper's own settings for that task and method (peftlab/lab/protocols.py,
# docs/paper_protocol.md); PROTOCOL=quick: 3 epochs, batch 32, last epoch. Later flags override the protocol.
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
no_offline=(); case " $* " in *" --train_split "*) no_offline=(--no_offline) ;; esac
defaults=$(python -m peftlab.lab.sweep "$task" "$method" --protocol "${PROTOCOL:-paper}" "${no_offline[@]}")  # peftlab/lab/sweep.py run_args
mapfile -t defaults <<< "$defaults"
command=(python run_glue.py "${defaults[@]}" --glue_dir "${GLUE_DIR:-../shared/glue}" --output_dir "$out" "$@")
if [ -n "${DRY_RUN:-}" ]; then echo "${command[*]}"; exit 0; fi
exec "${command[@]}"
