#!/usr/bin/env bash
# Regenerate docs/results/ (the CSV, every table and every figure of docs/results.md) from finished sweep runs,
# and splice the tables into docs/results.md:
#   scripts/results.sh [OUT=docs/results] [DOC=docs/results.md]
# Runs are read from docs/results/runs (the paper-protocol runs of record, kept in git) and runs/sweeps (local
# runs); rows of sweeps found in neither (the quick-protocol sweeps, whose run folders are gone) are kept from the
# existing runs.csv. Each step is also a single command on its own; a sweep with no finished runs is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/results}
DOC=${2:-docs/results.md}
CSV=$OUT/runs.csv
mkdir -p "$OUT"
python scripts/collect.py docs/results/runs runs/sweeps --keep "$CSV" --out "$CSV"

# has SWEEPS VARIANTS: the sweeps (comma-separated) have finished runs of every one of the variants (a table needs
# all its rows)
has() { python -c "import csv,sys; v={r['variant'] for r in csv.DictReader(open('$CSV')) if r['sweep'] in '$1'.split(',')}; sys.exit(not set('$2'.split(',')) <= v)"; }
# present SWEEPS: those of the sweeps (comma-separated) that have runs in the CSV, in the order given (a table of
# several sweep files' runs takes the ones that have run so far)
present() { python -c "import csv; s={r['sweep'] for r in csv.DictReader(open('$CSV'))}; print(','.join(x for x in '$1'.split(',') if x in s))"; }
# table1 NAME SWEEPS SCORE VARIANTS: Table 1 of the sweeps' runs as $OUT/NAME, and its gap bridged per task as
# $OUT/NAME_gap
table1() {
  python scripts/tables.py "$CSV" --sweep "$2" --score "$3" --out "$OUT/$1" --variants "$4"
  python scripts/tables.py "$CSV" --sweep "$2" --score "$3" --out "$OUT/${1}_gap" --variants "$4" --cells gap_bridged
}
TABLE1=raw_cls,raw_mean,prefix,lora,bitfit,adapter,parallel_adapter,finetune
LAYER=adapter_ffn,adapter_attn,prefix,lora,bitfit,ffn_finetune,raw,finetune
BN=parallel_adapter_bn,raw,finetune
STRATEGIES=adapter_1_layer,adapter_2_layers,adapter_plus_lora,lora_all,raw,finetune

for suffix in "" _paper; do
  scores=(reported); [ -n "$suffix" ] && scores=(reported last)  # the paper's protocol selects a best epoch
  for score in "${scores[@]}"; do
    tag=$suffix; [ "$score" = last ] && tag=${suffix}_last
    if has "table1$suffix" $TABLE1; then
      table1 "table1$tag" "table1$suffix" "$score" $TABLE1
    else echo "table1$suffix: not every row has finished runs yet"; fi
    if has "layer_sweep_mrpc$suffix" $LAYER; then
      python scripts/tables.py "$CSV" --sweep "layer_sweep_mrpc$suffix" --score "$score" --by layer --variants $LAYER \
        --out "$OUT/layer_sweep_mrpc$tag"
      python scripts/plots.py "$CSV" --sweep "layer_sweep_mrpc$suffix" --score "$score" --variants $LAYER \
        --out "$OUT/layer_sweep_mrpc$tag.png"
    else echo "layer_sweep_mrpc$suffix: not every row has finished runs yet"; fi
    if has "scaleup_mrpc$suffix" $BN,$STRATEGIES; then
      python scripts/tables.py "$CSV" --sweep "scaleup_mrpc$suffix" --score "$score" --by bottleneck_dim --variants $BN \
        --out "$OUT/bottleneck_mrpc$tag"
      python scripts/plots.py "$CSV" --sweep "scaleup_mrpc$suffix" --score "$score" --x bottleneck_dim --logx \
        --variants $BN --out "$OUT/bottleneck_mrpc$tag.png"
      python scripts/tables.py "$CSV" --sweep "scaleup_mrpc$suffix" --score "$score" --by layer --variants $STRATEGIES \
        --out "$OUT/strategies_mrpc$tag"
      python scripts/plots.py "$CSV" --sweep "scaleup_mrpc$suffix" --score "$score" --x layer --variants $STRATEGIES \
        --out "$OUT/strategies_mrpc$tag.png"
    else echo "scaleup_mrpc$suffix: not every row has finished runs yet"; fi
  done
done

# Table 1 on MPNet-base (12 layers, the paper's own layers): the float32 and the bfloat16 sweep files' runs make one
# table (bf16 scored as float32 did on MiniLM, docs/results.md A4); a footer names the cells of each
MPNET=$(present table1_paper_mpnet,table1_paper_mpnet_bf16)
if [ -n "$MPNET" ] && has $MPNET $TABLE1; then
  for tag in "" _last; do
    score=reported; [ -n "$tag" ] && score=last
    table1 "table1_paper_mpnet$tag" $MPNET $score $TABLE1
    # MiniLM's gap bridged over the same tasks as MPNet's whole columns, for the averages side by side
    tasks=$(python -c "import csv; from peftlab.glue.tasks import TASKS; print(','.join(c for c in next(csv.reader(open('$OUT/table1_paper_mpnet$tag.csv'))) if c in TASKS))")
    python scripts/tables.py "$CSV" --sweep table1_paper --score $score --out "$OUT/table1_paper${tag}_gap_mpnet_tasks" \
      --variants $TABLE1 --tasks "$tasks" --cells gap_bridged
  done
else echo "table1_paper_mpnet: not every row has finished runs yet"; fi

# Table 1's sparse rows (which entries, not which module, at the adapter's budget) beside the probe, the adapters and
# full fine-tuning of table1_paper: one table from the sparse sweep files' runs and table1_paper's
SPARSE=$(present table1_paper_sparse,table1_paper_sparse_bf16)
SPARSE_ROWS=raw_cls,raw_mean,adapter,parallel_adapter,adapter_pruned,sparse_random,sparse_magnitude,sparse_fisher,sparse_lt_sft,finetune
if [ -n "$SPARSE" ] && has $SPARSE,table1_paper $SPARSE_ROWS; then
  for tag in "" _last; do
    score=reported; [ -n "$tag" ] && score=last
    table1 "table1_paper_sparse$tag" $SPARSE,table1_paper $score $SPARSE_ROWS
  done
  python scripts/selection_cost.py "$CSV" --sweep $SPARSE --out "$OUT/sparse_selection_cost"
else echo "table1_paper_sparse: not every row has finished runs yet"; fi

# --target_layers auto against the full layer sweeps of the same runs (scripts/sweeps/auto_layer_check.json: 1,000
# training examples per task; auto_layer_check_full.json: whole training sets)
for sweep in auto_layer_check auto_layer_check_full; do
  if has $sweep adapter,lora,adapter_auto,lora_auto; then
    # beside auto, the layers fixed beforehand that Table 1 uses: the paper's, scaled to 6 layers
    # (scripts/sweeps/table1_paper.json: the adapter's layer 5 of 12 -> 2, LoRA's 10 of 12 -> 5)
    python scripts/auto_layer_check.py "$CSV" --sweep $sweep --out "$OUT/$sweep" --reference adapter=2 --reference lora=5
  else echo "$sweep: not every row has finished runs yet"; fi
done

python scripts/splice_tables.py "$DOC" "$OUT"
