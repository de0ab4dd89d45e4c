#!/usr/bin/env bash
# Regenerate docs/results/ (the CSV, every table and every figure of docs/results.md) from finished sweep runs,
# and splice the tables into docs/results.md:
#   scripts/results.sh [RUNS_ROOT=runs/sweeps] [OUT=docs/results] [DOC=docs/results.md]
# Each step is also a single command on its own; a sweep with no finished runs yet is skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/sweeps}
OUT=${2:-docs/results}
DOC=${3:-docs/results.md}
CSV=$OUT/runs.csv
mkdir -p "$OUT"
python scripts/collect.py "$RUNS" --out "$CSV"

has() { python -c "import csv,sys; sys.exit(not any(r['sweep'] == '$1' for r in csv.DictReader(open('$CSV'))))"; }

if has table1; then
  TABLE1=raw_cls,raw_mean,prefix,lora,bitfit,adapter,parallel_adapter,finetune
  python scripts/tables.py "$CSV" --sweep table1 --out "$OUT/table1" --variants $TABLE1
  python scripts/tables.py "$CSV" --sweep table1 --out "$OUT/table1_gap" --variants $TABLE1 --cells gap_bridged
else echo "table1: no finished runs yet"; fi

if has layer_sweep_mrpc; then
  LAYER=adapter_ffn,adapter_attn,prefix,lora,bitfit,ffn_finetune,raw,finetune
  python scripts/tables.py "$CSV" --sweep layer_sweep_mrpc --by layer --variants $LAYER --out "$OUT/layer_sweep_mrpc"
  python scripts/plots.py "$CSV" --sweep layer_sweep_mrpc --variants $LAYER --out "$OUT/layer_sweep_mrpc.png"
else echo "layer_sweep_mrpc: no finished runs yet"; fi

if has scaleup_mrpc; then
  BN=parallel_adapter_bn,raw,finetune
  STRATEGIES=adapter_1_layer,adapter_2_layers,adapter_plus_lora,lora_all,raw,finetune
  python scripts/tables.py "$CSV" --sweep scaleup_mrpc --by bottleneck_dim --variants $BN --out "$OUT/bottleneck_mrpc"
  python scripts/plots.py "$CSV" --sweep scaleup_mrpc --x bottleneck_dim --logx --variants $BN \
    --out "$OUT/bottleneck_mrpc.png"
  python scripts/tables.py "$CSV" --sweep scaleup_mrpc --by layer --variants $STRATEGIES --out "$OUT/strategies_mrpc"
  python scripts/plots.py "$CSV" --sweep scaleup_mrpc --x layer --variants $STRATEGIES --out "$OUT/strategies_mrpc.png"
else echo "scaleup_mrpc: no finished runs yet"; fi

python scripts/splice_tables.py "$DOC" "$OUT"
