#!/usr/bin/env python
"""Benchmark of a sweep, not of a step: one Table 1 column end to end, today's path against the new one.

    python scripts/bench_sweep.py --task rte --train_samples 512 --epochs 1 --seeds 42,43          # tiny column
    python scripts/bench_sweep.py --task mrpc --train_samples 1000 --seeds 42,43,44 --epochs 5     # reduced column

The column is Table 1's seven frozen rows (probe cls and mean, prefix, LoRA and BitFit at layer 5, sequential and
parallel adapter at layer 2) under ``--protocol paper`` with the frozen-prefix cache, for each seed. Two paths:

- one process per run (the path before the sweep-cost work): ``python run_glue.py args.json`` for each run, one
  after another; each run fills the cache of its own row (rows that read the same layer find it on disk), keeps
  its best epoch through the Trainer's checkpoints (``--best_model_in_memory false``) and writes its weights;
- the new path: ``scripts/sweep.py``'s engine (``run_sweep``), one fill job computing every row's cache in one
  pass per split, then one process per seed training its seven runs, best epoch kept in memory, scores only.

Both start from an empty cache folder and run on one worker with one thread. Repeats alternate between the two
paths (old, new, old, new...) so that both see the same machine load, and the table gives each path's median
wall time, the ratio, and the largest difference between the two paths' scores of the same run. A benchmark,
never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peftlab.lab.sweep import run_sweep
from peftlab.lab.sweepfile import expand

REPO = Path(__file__).resolve().parents[1]
ROWS = {
    "raw": {"method": "probe", "per_pooling": True},
    "prefix": {"method": "prefix@5"},
    "lora": {"method": "lora@5"},
    "bitfit": {"method": "bitfit@5"},
    "adapter": {"method": "adapter@2", "adapter_form": "sequential"},
    "parallel_adapter": {"method": "adapter@2", "adapter_form": "parallel"},
}


def column(args, root: Path, cache: Path) -> list:
    common = {"cache_frozen_prefix": True, "frozen_cache_dir": str(cache), "glue_dir": args.glue_dir,
              "max_train_samples": args.train_samples, "max_eval_samples": args.eval_samples,
              "num_train_epochs": args.epochs}  # fmt: skip
    sweep = {"name": "column", "protocol": "paper", "tasks": [args.task], "poolings": ["cls", "mean"],
             "seeds": [int(s) for s in args.seeds.split(",")], "variants": ROWS, "common": common}  # fmt: skip
    return expand(sweep, root)


def old_path(args, work: Path) -> tuple[float, list]:
    runs = column(args, work / "runs", work / "cache")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    for run in runs:
        run.output_dir.mkdir(parents=True)
        argument_file = run.output_dir.parent / f"{run.output_dir.name}.args.json"
        argument_file.write_text(json.dumps({**run.args, "best_model_in_memory": False, "save_model": True}))
        subprocess.run([sys.executable, "run_glue.py", str(argument_file)], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start, runs


def new_path(args, work: Path) -> tuple[float, list]:
    runs = column(args, work / "runs", work / "cache")
    os.environ["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    left = run_sweep(runs, work / "runs" / "column", workers=1, log=lambda _: None)
    if left:
        raise SystemExit(f"new path: runs not finished: {[r.name for r in left]} (see {work}/runs/column/.jobs)")
    return time.perf_counter() - start, runs


def probe_overhead(runs) -> list[float]:
    """Seconds each probe run of the new path spent beyond its training (model copy, trainer, results; its final
    evaluation is the kept best epoch's, so training's evaluations are its only ones)."""
    out = []
    for run in runs:
        if run.args["method"] == "probe":
            results = json.loads((run.output_dir / "all_results.json").read_text())
            out.append(results["wall_seconds"] - results["train_runtime"])
    return out


def scores(runs) -> dict:
    out = {}
    for run in runs:
        results = json.loads((run.output_dir / "all_results.json").read_text())
        out[run.name] = {k: v for k, v in results.items() if k.startswith("eval_") and isinstance(v, float)
                         and not k.endswith(("runtime", "per_second"))}  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="rte")
    parser.add_argument("--train_samples", type=int, default=512)
    parser.add_argument("--eval_samples", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--seeds", default="42,43")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "glue")))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (printed)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"old": [], "new": []}
    results: dict[str, dict] = {}
    overheads: list[float] = []
    for repeat in range(args.repeats):
        for name, path in (("old", old_path), ("new", new_path)):
            work = Path(tempfile.mkdtemp(prefix=f"bench_sweep_{name}_"))
            seconds, column_runs = path(args, work)
            times[name].append(seconds)
            results[name] = scores(column_runs)
            if name == "new":
                overheads.extend(probe_overhead(column_runs))
            print(f"repeat {repeat + 1}: {name} path {seconds:.1f} s ({work})", flush=True)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    diff = max(
        abs(results["old"][run][k] - results["new"][run][k]) for run in results["old"] for k in results["old"][run]
    )
    old, new = statistics.median(times["old"]), statistics.median(times["new"])
    runs = len(results["old"])
    print("\n| column | runs | one process per run (s) | new path (s) | speed-up | largest score difference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.task}, {args.train_samples} train examples, {args.epochs:g} epochs, seeds {args.seeds} | {runs} "
          f"| {old:.1f} | {new:.1f} | {old / new:.2f}x | {diff:.2g} |")  # fmt: skip
    print(
        f"\nprobe runs of the new path, seconds beyond their training: median {statistics.median(overheads):.2f}, "
        f"max {max(overheads):.2f} ({len(overheads)} runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
