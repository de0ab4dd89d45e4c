#!/usr/bin/env bash
# The README's method table: each method at the paper's settings scaled to the 6-layer MiniLM (adapter and
# parallel adapter at layer 2 with bottleneck 2; LoRA, prefix, BitFit and FFN-only at layer 5; mean pooling),
# on RTE and MRPC, seed 42, with the frozen-prefix cache (frozen layers without dropout). Wall time of each
# run goes to <run>/wall_seconds.txt.
# Usage: scripts/method_table.sh [task ...]   (default: rte mrpc)
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=("$@"); [ ${#tasks[@]} -gt 0 ] || tasks=(rte mrpc)
methods=(
  "probe"
  "bitfit@5"
  "lora@5"
  "prefix@5"
  "ffn@5"
  "adapter@2 --bottleneck_dim 2"
  "adapter@2 --bottleneck_dim 2 --adapter_form parallel --adapter_scaling 4"
)
for task in "${tasks[@]}"; do
  for spec in "${methods[@]}"; do
    read -r method options <<< "$spec"
    name=${method//[@+,]/_}; [[ $options == *parallel* ]] && name=${name/adapter/parallel_adapter}
    out=runs/methods/$task/$name
    start=$(date +%s)
    OUT_DIR=$out scripts/glue.sh "$task" "$method" $options --pooling mean --cache_frozen_prefix
    [ -f "$out/wall_seconds.txt" ] || echo $(( $(date +%s) - start )) > "$out/wall_seconds.txt"
  done
done
