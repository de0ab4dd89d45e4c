#!/usr/bin/env python
"""Run a sweep: python scripts/sweep.py scripts/sweeps/layer_sweep_mrpc.json [--root runs/sweeps] [--workers N]

Expands the grid in the JSON file (see peftlab/sweep.py), runs the unfinished runs, one after another or
--workers at a time (an interrupted sweep resumes where it stopped; finished runs are never redone or overwritten). --dry_run prints the
runs and a rough CPU-time estimate without starting anything (scripts/estimate_check.py compares it with
measured runs).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.sweep import (  # noqa: E402
    cache_key,
    estimate_seconds,
    expand,
    fingerprint,
    finished_runs,
    load_sweep,
    run_all,
    workload,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep definition (JSON)")
    parser.add_argument("--root", default="runs/sweeps", help="runs go to ROOT/<sweep name>/...")
    parser.add_argument("--dry_run", action="store_true", help="print the runs and a CPU-time estimate, run nothing")
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", "../shared/glue"))
    parser.add_argument(
        "--tasks",
        help="comma-separated subset of the sweep's tasks to run now, in the order given (e.g. the cheap ones "
        "first); default: all, in the sweep's order",
    )
    parser.add_argument(
        "--no_reuse",
        action="store_true",
        help="run every run, even one whose arguments equal those of a finished run elsewhere under --root "
        "(by default its results are copied in, with reused_from.txt naming the source)",
    )
    parser.add_argument(
        "--workers", type=int, default=1,
        help="runs side by side (each gets OMP_NUM_THREADS = cores // workers); several sweep processes, "
        "even on machines sharing --root, may also work on one sweep: a lock file keeps them off each other's runs",
    )  # fmt: skip
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    sweep = load_sweep(args.sweep)
    if args.tasks:
        chosen = args.tasks.split(",")
        unknown = [t for t in chosen if t not in sweep.get("tasks", [])]
        if unknown:
            parser.error(f"--tasks {','.join(unknown)}: not in the sweep; its tasks are {', '.join(sweep['tasks'])}")
        sweep["tasks"] = list(dict.fromkeys(chosen))  # in the order given: cheap tasks first finish whole columns
    runs = expand(sweep, args.root)
    for run in runs:
        run.args.setdefault("glue_dir", args.glue_dir)
    if args.dry_run:
        total = 0.0
        done = {} if args.no_reuse else finished_runs(args.root)
        reused = 0
        cached = {cache_key(run) for run in runs if run.finished}  # the first run with a new key fills the cache
        for run in runs:
            source = None if run.finished else done.get(fingerprint(run.args))
            if source is not None:
                reused += 1
                print(f"{run.name:60s} {run.args['method']:24s} reuse {source}")
                continue
            if run.finished:
                print(f"{run.name:60s} {run.args['method']:24s} finished")
                continue
            key = cache_key(run)
            seconds = estimate_seconds(run, workload(run, args.glue_dir), fills_cache=key not in cached)
            cached.add(key)
            total += seconds
            print(f"{run.name:60s} {run.args['method']:24s} ~{seconds / 60:.1f} core-min")
        cores = os.cpu_count() or 1
        print(
            f"\n{len(runs)} runs, {sum(r.finished for r in runs)} finished, {reused} to be copied from identical finished"
            f" runs; estimated CPU time left: {total / 3600:.1f} core-hours, about {total / 3600 / cores:.1f} h on"
            f" this machine's {cores} cores with --workers {cores} (rough: see scripts/estimate_check.py)"
        )
        return 0
    # A terminated sweep stops its runs and frees their locks (the runs left are redone on the next start).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    failed = run_all(runs, workers=args.workers, reuse_root=None if args.no_reuse else args.root)
    finished = sum(run.finished for run in runs)
    elsewhere = len(runs) - finished - len(failed)  # left to another sweep process that holds their locks
    print(
        f"{finished} of {len(runs)} runs finished"
        + (f"; {elsewhere} running in another sweep process" if elsewhere else "")
        + (f"; failed: {[r.name for r in failed]}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
