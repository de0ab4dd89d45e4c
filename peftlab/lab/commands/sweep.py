"""Run a sweep: peftlab sweep scripts/sweeps/layer_sweep_mrpc.json [--root runs/sweeps] [--workers N]
                                        [--backend local|ray [--address auto] [--gpus_per_job 1]]

Expands the grid in the JSON file (see peftlab/lab/sweep.py), skips finished runs, copies the results of identical
finished runs, and runs the rest as jobs: per group of runs on the same data, one fill job for the frozen-prefix
caches and chunks of runs that share one process each. --backend local runs --workers jobs at a time on this
machine; --backend ray hands them to Ray (a local one, or the cluster at --address, whose workers must share
--root). An interrupted sweep resumes where it stopped, each unfinished run from its last epoch. --dry_run prints
the jobs and a CPU-time estimate without starting anything (scripts/estimate_check.py compares it with measured
jobs).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from peftlab.io import is_locked
from peftlab.lab.costmodel import gpu_seconds, job_terms, run_cost, run_terms, seconds_of, trains_backbone, workload
from peftlab.lab.sweep import BACKENDS, fingerprint, finished_runs, load_sweep, plan_jobs, run_sweep
from peftlab.lab.sweepfile import check_runs, expand


def gpu_dry_run(runs, args) -> int:
    total = 0.0
    for run in runs:
        seconds = 0.0 if run.finished else gpu_seconds(run, args.gpu_tflops)
        total += seconds
        print(f"{run.name:60s} {run.args['method']:24s} ~{seconds / 60:.1f} GPU-min")
    print(
        f"\n{len(runs)} runs, {sum(r.finished for r in runs)} finished; estimated time left on one GPU: "
        f"{total / 3600:.1f} h at an assumed {args.gpu_tflops:g} TFLOP/s achieved (a FLOP count, not a measurement: "
        "see gpu_seconds in peftlab/lab/sweep.py)"
    )
    return 0


def dry_run(runs, args) -> int:
    done = {} if args.no_reuse else finished_runs(args.root)
    todo, reused = [], 0
    for run in runs:
        if run.finished:
            print(f"{run.name:60s} {run.args['method']:24s} finished")
        elif fingerprint(run.args) in done:
            reused += 1
            print(f"{run.name:60s} {run.args['method']:24s} reuse {done[fingerprint(run.args)]}")
        else:
            todo.append(run)
    total = backbone = 0.0
    for job in plan_jobs(todo, args.workers, cost=run_cost):
        fill_done = job.fill and any(r.finished for r in runs if r.args["task_name"] == job.runs[0].args["task_name"])
        seconds = seconds_of(job_terms(job, args.glue_dir, fill_done=fill_done))
        total += seconds
        kind = "fill" if job.fill else f"{len(job.runs)} runs"
        print(f"job {job.name:48s} {kind:10s} ~{seconds / 60:.1f} core-min")
        if not job.fill:
            for run in job.runs:
                print(f"    {run.name:56s} {run.args['method']}")
                if trains_backbone(run):
                    backbone += seconds_of(run_terms(run, workload(run, args.glue_dir)))
    cores = os.cpu_count() or 1
    print(
        f"\n{len(runs)} runs, {sum(r.finished for r in runs)} finished, {reused} to be copied from identical finished"
        f" runs; estimated CPU time left: {total / 3600:.1f} core-hours, about {total / 3600 / cores:.1f} h on this"
        f" machine's {cores} cores with --workers {cores} (see scripts/estimate_check.py): {backbone / 3600:.1f} for"
        f" full fine-tuning runs, {(total - backbone) / 3600:.1f} for the frozen-backbone ones, their fills and start-ups"
    )
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftlab sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", help="sweep definition (JSON)")
    parser.add_argument("--root", default="runs/sweeps", help="runs go to ROOT/<sweep name>/...")
    parser.add_argument("--dry_run", action="store_true", help="print the jobs and a CPU-time estimate, run nothing")
    parser.add_argument(
        "--gpu_tflops", type=float,
        help="with --dry_run: estimate hours on one GPU achieving this many TFLOP/s (a FLOP count; 18: what one H200 "
        "achieved in fp32 on roberta-base-shaped MRPC runs, docs/bench_gpu.md)",
    )  # fmt: skip
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", "../shared/glue"))
    parser.add_argument(
        "--tasks",
        help="comma-separated subset of the sweep's tasks to run now, in the order given (e.g. the cheap ones "
        "first); default: all, in the sweep's order",
    )
    parser.add_argument("--seeds", help="comma-separated subset of the sweep's seeds to run now")
    parser.add_argument(
        "--variants", help="comma-separated subset of the sweep's variants to run now (e.g. the ones a verdict needs)"
    )
    parser.add_argument(
        "--no_reuse",
        action="store_true",
        help="run every run, even one whose arguments equal those of a finished run elsewhere under --root "
        "(by default its results are copied in, with reused_from.txt naming the source)",
    )
    parser.add_argument("--workers", type=int, default=1, help="jobs side by side (each gets cores // workers threads)")
    parser.add_argument("--backend", default="local", choices=BACKENDS, help="local process pool, or Ray")
    parser.add_argument(
        "--address", help="Ray cluster address (e.g. auto after `ray start --head`); default: a local Ray"
    )
    parser.add_argument("--gpus_per_job", type=float, default=0, help="Ray: GPUs each job asks for (1 for CUDA runs)")
    parser.add_argument(
        "--threads", type=int, help="Ray: CPUs (and threads) each job asks for; default cores // workers"
    )
    return parser


def select(sweep: dict, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Keep the ``--tasks``, ``--seeds`` and ``--variants`` asked for (tasks and seeds in the order given)."""
    for key in ("tasks", "seeds", "variants"):
        if getattr(args, key):
            present = list(sweep.get(key, [42]))  # the variants' names (a dict), the tasks or the seeds (lists)
            try:
                chosen = [type(present[0])(v) for v in getattr(args, key).split(",")]
            except ValueError:
                parser.error(f"--{key} {getattr(args, key)}: give a comma-separated list such as 42,43")
            unknown = [str(v) for v in chosen if v not in present]
            if unknown:
                parser.error(
                    f"--{key} {','.join(unknown)}: not in the sweep; its {key} are {', '.join(map(str, present))}"
                )
            if key == "variants":  # in the sweep's order
                sweep[key] = {name: v for name, v in sweep[key].items() if name in chosen}
            else:  # in the order given: cheap tasks first finish whole columns
                sweep[key] = list(dict.fromkeys(chosen))


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    sweep = load_sweep(args.sweep)
    select(sweep, args, parser)
    source = f"Sweep file {args.sweep}"
    runs = expand(sweep, args.root, source)
    for run in runs:
        run.args.setdefault("glue_dir", args.glue_dir)
    if args.dry_run:
        check_runs([run for run in runs if not run.finished], source)
        return gpu_dry_run(runs, args) if args.gpu_tflops else dry_run(runs, args)
    # A terminated sweep stops its jobs (their unfinished runs are redone on the next start).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    options = {"address": args.address, "gpus_per_job": args.gpus_per_job, "threads": args.threads}
    left = run_sweep(
        runs, Path(args.root) / sweep["name"], workers=args.workers, backend=args.backend,
        reuse_root=None if args.no_reuse else args.root, source=source,
        **(options if args.backend == "ray" else {}),
    )  # fmt: skip
    finished = sum(run.finished for run in runs)
    elsewhere = [run.name for run in left if is_locked(run.output_dir)]  # another driver is training these
    failed = [run.name for run in left if run.name not in elsewhere]
    print(f"{finished} of {len(runs)} runs finished" + (f"; being trained by another process: {elsewhere}" if elsewhere else "") + (f"; not finished: {failed}" if failed else ""))  # fmt: skip
    return 1 if failed else 0
