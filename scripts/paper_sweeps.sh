#!/usr/bin/env bash
# The paper-protocol sweeps on the bundled model, in the order they were run for docs/results.md, resumable:
# each line skips the runs already finished under docs/results/runs (kept in git), so rerunning this script after
# an interruption picks up where it stopped (an unfinished run resumes from its last checkpoint: sweeps set
# --resumable). Two jobs at a time, one thread each (the 2-core CPU).
#   [PRECISION=bf16|bf16_fast] bash scripts/paper_sweeps.sh [extra scripts/sweep.py flags, e.g. --dry_run]
# PRECISION=bf16 runs the same sweeps in the CPU's bfloat16 setting (their *_bf16.json files, whose own sweep names
# keep their runs apart from the float32 ones), whose scores equal float32's (docs/results/precision_bf16.md);
# PRECISION=bf16_fast adds --fast_dropout (*_bf16_fast.json), faster still, with scores that do not all equal
# float32's (docs/results/precision_bf16_fast.md). docs/performance.md has the timings.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${PRECISION:-fp32}" in
  fp32) p="" ;;
  bf16) p="_bf16" ;;
  bf16_fast) p="_bf16_fast" ;;
  *) echo "PRECISION=$PRECISION is not valid; choose fp32 (the default), bf16 or bf16_fast." >&2; exit 2 ;;
esac
# A sweep with unfinished runs (a run that failed) does not stop the ones after it: the script goes on, says which,
# and exits 1 at the end; an interrupt (Ctrl-C, SIGTERM: exit 130, 143) stops it.
failed=()
sweep() {
  local code=0
  python scripts/sweep.py "$@" --root "${ROOT:-docs/results/runs}" --workers "${WORKERS:-2}" "${EXTRA[@]}" || code=$?
  if [ "$code" -gt 128 ]; then exit "$code"; elif [ "$code" -ne 0 ]; then failed+=("$*"); fi
}
EXTRA=("$@")
# 1. Table 1: the seven cheaper tasks with three seeds, then SST-2 and QQP with one.
sweep scripts/sweeps/table1_paper$p.json --tasks rte,mrpc,stsb,cola,wnli,qnli,mnli
sweep scripts/sweeps/table1_paper$p.json --tasks sst2,qqp --seeds 42
# 2. The MRPC layer sweep and scale-up: seed 42 of both first (whole tables early), then seeds 43 and 44.
sweep scripts/sweeps/layer_sweep_mrpc_paper$p.json --seeds 42
sweep scripts/sweeps/scaleup_mrpc_paper$p.json --seeds 42
sweep scripts/sweeps/layer_sweep_mrpc_paper$p.json
sweep scripts/sweeps/scaleup_mrpc_paper$p.json
# 3. More seeds of SST-2 and QQP as the machine allows.
sweep scripts/sweeps/table1_paper$p.json --tasks sst2,qqp --seeds 43,44
if [ ${#failed[@]} -gt 0 ]; then printf 'unfinished runs in: %s\n' "${failed[@]}" >&2; exit 1; fi
