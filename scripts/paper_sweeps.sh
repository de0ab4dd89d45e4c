#!/usr/bin/env bash
# The paper-protocol sweeps, in the order they were run for docs/results.md, resumable: each line skips the runs
# already finished under docs/results/runs (kept in git), so rerunning this script after an interruption picks up
# where it stopped (an unfinished run resumes from its last checkpoint: sweeps set --resumable). Two jobs at a time,
# one thread each (the 2-core CPU).
#   [PRECISION=fp32|bf16|bf16_fast] [PARTS=minilm,mpnet,sparse] bash scripts/paper_sweeps.sh [extra scripts/sweep.py flags, e.g. --dry_run]
# PARTS (comma-separated, run in the order given; default minilm): minilm, Part A on the bundled model (Table 1, the
# MRPC layer sweep and scale-up); mpnet, Part D on MPNet-base at the paper's own layers (`peftlab get-model
# mpnet-base` once); sparse, Part E's sparse rows and their budget curve on the bundled model.
# PRECISION=bf16 runs the same sweeps in the CPU's bfloat16 setting (their *_bf16.json files, whose own sweep names
# keep their runs apart from the float32 ones), whose scores equal float32's (docs/results/precision_bf16.md), on a
# CPU with native bf16 only (elsewhere bf16 is emulated and slower than float32: docs/performance.md);
# PRECISION=bf16_fast adds --fast_dropout (*_bf16_fast.json; Part A only), faster still, with scores that do not all
# equal float32's (docs/results/precision_bf16_fast.md). docs/performance.md has the timings.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${PRECISION:-fp32}" in
  fp32) p="" q="_bf16" ;;
  bf16) p="_bf16" q="" ;;
  bf16_fast) p="_bf16_fast" q=none ;;
  *) echo "PRECISION=$PRECISION is not valid; choose fp32 (the default), bf16 or bf16_fast." >&2; exit 2 ;;
esac
IFS=, read -ra parts <<< "${PARTS:-minilm}"
for part in "${parts[@]}"; do
  case "$part" in
    minilm | mpnet) ;;
    sparse) [ "$p" != _bf16_fast ] || { echo "PARTS=sparse has no bf16_fast files; choose PRECISION=fp32 or bf16." >&2; exit 2; } ;;
    *) echo "PARTS: '$part' is not a part; choose from minilm, mpnet, sparse (comma-separated)." >&2; exit 2 ;;
  esac
done
# A sweep with unfinished runs (a run that failed) does not stop the ones after it: the script goes on, says which,
# and exits 1 at the end; an interrupt (Ctrl-C, SIGTERM: exit 130, 143) stops it.
failed=()
sweep() {
  local code=0
  python scripts/sweep.py "$@" --root "${ROOT:-docs/results/runs}" --workers "${WORKERS:-2}" "${EXTRA[@]}" || code=$?
  if [ "$code" -gt 128 ]; then exit "$code"; elif [ "$code" -ne 0 ]; then failed+=("$*"); fi
}
EXTRA=("$@")
# twin NAME: --done_in for the NAME sweep's file in the other precision (fp32 <-> bf16), where it has runs: Parts D
# and E take each grid point from whichever precision finished it (their scores are equal, docs/results.md A4).
# Part A runs both precisions in full: they are the comparison that showed it.
twin() { if [ "$q" != none ] && [ -d "${ROOT:-docs/results/runs}/$1$q" ]; then printf -- '--done_in %s' "$1$q"; fi; }
for part in "${parts[@]}"; do
  case "$part" in
    minilm)
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
      ;;
    mpnet)
      # Table 1's five small tasks with seed 42; the paper's claims 3 and 4 at its own layer on MRPC (FFN-only
      # fine-tuning of layer 5; the parallel adapter's bottleneck 8 and 64 beside Table 1's 2), seed 42; seeds 43 and
      # 44 of Table 1; then the whole MRPC layer sweep and scale-up, which take those runs as they are.
      # shellcheck disable=SC2046  # twin's two words
      sweep scripts/sweeps/table1_paper_mpnet$p.json --tasks rte,mrpc,stsb,cola,wnli --seeds 42 $(twin table1_paper_mpnet)
      # shellcheck disable=SC2046
      sweep scripts/sweeps/layer_sweep_mrpc_paper_mpnet$p.json --seeds 42 --layers 5 --variants ffn_finetune,adapter_ffn,finetune $(twin layer_sweep_mrpc_paper_mpnet)
      # shellcheck disable=SC2046
      sweep scripts/sweeps/scaleup_mrpc_paper_mpnet$p.json --seeds 42 --bottleneck_dims 2,8,64 --variants parallel_adapter_bn,raw,finetune $(twin scaleup_mrpc_paper_mpnet)
      sweep scripts/sweeps/table1_paper_mpnet$p.json --tasks rte,mrpc,stsb,cola,wnli --seeds 43,44 $(twin table1_paper_mpnet)
      sweep scripts/sweeps/layer_sweep_mrpc_paper_mpnet$p.json --seeds 42 $(twin layer_sweep_mrpc_paper_mpnet)
      sweep scripts/sweeps/scaleup_mrpc_paper_mpnet$p.json --seeds 42 $(twin scaleup_mrpc_paper_mpnet)
      ;;
    sparse)
      # Table 1's sparse rows (seven tasks, seeds 42-44; the tasks with a wide gap first), then their budget curve on
      # MRPC and STS-B.
      # shellcheck disable=SC2046
      sweep scripts/sweeps/table1_paper_sparse$p.json --tasks mrpc,stsb,cola,qnli,mnli,rte,wnli $(twin table1_paper_sparse)
      # shellcheck disable=SC2046
      sweep scripts/sweeps/sparse_budget_paper$p.json $(twin sparse_budget_paper)
      ;;
  esac
done
if [ ${#failed[@]} -gt 0 ]; then printf 'unfinished runs in: %s\n' "${failed[@]}" >&2; exit 1; fi
