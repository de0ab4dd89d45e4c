#!/usr/bin/env bash
# The GPU check: one prepared script that finishes in under 8 minutes on one GPU and writes docs/bench_gpu.md.
#
#   bash scripts/device_check.sh prepare   # here, on a machine with pip and the GLUE folder: fills .device/
#   bash scripts/device_check.sh run       # on the GPU machine, in a copy of the repository that carries .device/
#
# prepare puts into .device/ (ignored by git) what a bare GPU image lacks: wheels of the Python packages it does not
# have at our versions (datasets and its pure-Python needs, transformers), the bundled MiniLM saved in fp16 (45 MB:
# the whole model would not fit a 64 MiB transfer; fp32 runs upcast it, so every run still computes in its own
# precision from the same weights), and MRPC's train and dev files.
# run installs the wheels under /tmp/site, then, writing docs/bench_gpu.md (and $OUT/bench_gpu.md when $OUT is set):
#   1. the GPU-only tests (tests/test_precision.py, skipped on CPUs);
#   2. scripts/bench.py in fp32, fp16 and bf16: full fine-tuning, a top-layer adapter with and without the cache,
#      LoRA against HF peft's, with peak GPU memory per method (RTE, 512 examples, batch 32);
#   3. one MRPC Table 1 column (the seven frozen rows and full fine-tuning, --protocol paper, seed 42) in fp16 and in
#      fp32, two jobs at a time on the GPU, and the scores side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: scripts/device_check.sh prepare|run}
DEV=.device

if [ "$stage" = prepare ]; then
  mkdir -p "$DEV/whl" "$DEV/glue/MRPC" "$DEV/glue/RTE"
  grep -qx "/$DEV/" .git/info/exclude 2>/dev/null || echo "/$DEV/" >> .git/info/exclude
  pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEV/whl" datasets==5.2.0 transformers==5.24.0 "dill<0.4.2" "multiprocess<0.70.20"
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
  du -sh "$DEV"
  exit 0
fi

[ "$stage" = run ] || { echo "usage: scripts/device_check.sh prepare|run" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$DEV"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export GLUE_DIR=$DEV/glue
MODEL=$DEV/minilm
REPORT=docs/bench_gpu.md
{
  echo "# GPU check"
  echo
  echo "\`bash scripts/device_check.sh run\`, $(date -u '+%Y-%m-%d %H:%M UTC'), on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1);"
  echo "torch $(python3 -c 'import torch; print(torch.__version__)'), transformers $(python3 -c 'import transformers; print(transformers.__version__)');"
  echo "the bundled MiniLM (stored in fp16, computed in each run's precision)."
  echo
  echo "## 1. GPU-only tests"
  echo '```'
  python3 -m pytest -q tests/test_precision.py 2>&1 | tail -4
  echo '```'
  echo
  echo "## 2. Steps in fp32, fp16 and bf16 (RTE, 512 examples, batch 32; peak extra GPU memory per method)"
  for precision in fp32 fp16 bf16; do
    echo
    echo "### $precision"
    python3 scripts/bench.py --device cuda --precision "$precision" --model "$MODEL" --samples 512 --batch_size 32 \
      --repeats 3 --only "full;adapter@5;adapter@5 +cache;lora q,v all layers r=8;HF peft lora q,v all layers r=8" \
      2>/dev/null | grep -E '^(\||- |#)'
  done
  echo
  echo "## 3. One MRPC Table 1 column, fp16 against fp32 (--protocol paper, seed 42, the frozen-prefix cache)"
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
    python3 scripts/sweep.py "/tmp/mrpc_$precision.json" --root /tmp/device_runs --workers 2 --glue_dir "$GLUE_DIR" >/dev/null
  done
  python3 scripts/collect.py /tmp/device_runs --out /tmp/device_runs/runs.csv >/dev/null
  python3 - <<'EOF'
import csv
rows = list(csv.DictReader(open("/tmp/device_runs/runs.csv")))
score = {(r["sweep"], r["variant"]): float(r["score"]) for r in rows}
wall = {(r["sweep"], r["variant"]): float(r["wall_seconds"] or 0) for r in rows}
print("| row | fp32 | fp16 | difference | fp32 s | fp16 s |\n| --- | ---: | ---: | ---: | ---: | ---: |")
for variant in dict.fromkeys(r["variant"] for r in rows):
    a, b = score.get(("mrpc_fp32", variant)), score.get(("mrpc_fp16", variant))
    if a is not None and b is not None:
        print(f"| {variant} | {100 * a:.1f} | {100 * b:.1f} | {100 * (b - a):+.1f} | "
              f"{wall[('mrpc_fp32', variant)]:.0f} | {wall[('mrpc_fp16', variant)]:.0f} |")
EOF
} > "$REPORT" 2>&1
cat "$REPORT"
[ -n "${OUT:-}" ] && cp "$REPORT" "$OUT/" || true
