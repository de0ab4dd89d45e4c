"""Run a sweep: peftlab sweep scripts/sweeps/layer_sweep_mrpc.json [--root runs/sweeps] [--workers N]
                                        [--backend local|ray [--address auto] [--gpus_per_job 1]]
                                        [--set KEY=VALUE ... --root OTHER_ROOT]
Where one stands: peftlab sweep --status runs/sweeps/layer_sweep_mrpc    (or: FILE [--root ROOT] --status)

Expands the grid in the JSON file (see peftlab/lab/sweep.py), skips finished runs, copies the results of identical
finished runs, and runs the rest as jobs: per group of runs on the same data, one fill job for the frozen-prefix
caches and chunks of runs that share one process each. --backend local runs --workers jobs at a time on this
machine; --backend ray hands them to Ray (a local one, or the cluster at --address, whose workers must share
--root). An interrupted sweep resumes where it stopped, each unfinished run from its last epoch. --dry_run prints
the jobs and a CPU-time estimate without starting anything (scripts/estimate_check.py compares it with measured
jobs).

Progress: while jobs run, the driver prints one line after each job's end and every --progress_every seconds (60)
when something changed, e.g.
    progress: 5 of 10 runs finished, 2 running, 3 left; jobs: 1 of 3 ended; ETA 24 min (41 estimated core-min
    left, x 1.16 measured/estimated so far, on 2 cores)
(the ETA: the cost model's estimate of what is left, corrected by the ratio measured/estimated of the jobs ended
and runs finished so far, over the cores the jobs use). --status prints the same line for a sweep running
elsewhere, or stopped, from its folder (ROOT/<name>: its .jobs/ files and run folders), and starts nothing.

Trying things: --set KEY=VALUE (repeatable; VALUE is read as JSON when it is JSON, else as a string) sets that run
option on every run of the grid (e.g. --set max_train_samples=64 --set num_train_epochs=1), checked by the runs'
own parser before anything starts. Such runs are not the sweep's runs of record: --set needs a --root of its own,
neither the default runs/sweeps nor the committed docs/results/runs; the options are in each run's args.json, and
ROOT/<name>/overrides.json records them, so that runs with and without (or with other) --set never share a folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError
from peftlab.io import is_locked, write_json
from peftlab.lab.costmodel import gpu_seconds, job_terms, run_cost, run_terms, seconds_of, trains_backbone, workload
from peftlab.lab.progress import PROGRESS_EVERY, sweep_status
from peftlab.lab.sweep import (
    BACKENDS,
    fingerprint,
    finished_runs,
    load_sweep,
    plan_jobs,
    run_sweep,
)
from peftlab.lab.sweepfile import RESULTS, SET_BY_THE_SWEEP, Run, check_runs, effective_args, expand

DEFAULT_ROOT = "runs/sweeps"
"""Where runs go without --root (relative to the working directory; ignored by git). The committed results under
COMMITTED_ROOT are written only where a command names them (scripts/paper_sweeps.sh)."""
COMMITTED_ROOT = Path(__file__).resolve().parents[3] / "docs" / "results" / "runs"
OVERRIDES = "overrides.json"
"""In a sweep's folder: the --set options its runs were made with (absent: none)."""


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
    from peftlab.lab.args import cpu_has_fast_bf16  # (imports torch: only for a dry run)

    if any(effective_args(run.args).get("bf16") for run in todo) and not cpu_has_fast_bf16():
        print(
            "\nThis CPU has no native bf16 (no avx512_bf16 or AMX): its --bf16 runs take several times the estimate,"
            " which is measured on CPUs with it; the float32 sweep file runs faster here, to the same scores."
        )
    return 0


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that keep part of the grid, or leave out runs finished elsewhere (:func:`select`, :func:`done_in`)."""
    parser.add_argument(
        "--tasks",
        help="comma-separated subset of the sweep's tasks to run now, in the order given (e.g. the cheap ones "
        "first); default: all, in the sweep's order",
    )
    parser.add_argument("--seeds", help="comma-separated subset of the sweep's seeds to run now")
    parser.add_argument(
        "--layers", help="comma-separated subset of the sweep's layers (its per-layer variants') to run now"
    )
    parser.add_argument("--bottleneck_dims", help="comma-separated subset of the sweep's bottleneck sizes to run now")
    parser.add_argument(
        "--variants", help="comma-separated subset of the sweep's variants to run now (e.g. the ones a verdict needs)"
    )
    parser.add_argument(
        "--no_reuse",
        action="store_true",
        help="run every run, even one whose arguments equal those of a finished run elsewhere under --root "
        "(by default its results are copied in, with reused_from.txt naming the source)",
    )
    parser.add_argument(
        "--done_in", metavar="SWEEPS",
        help="comma-separated other sweeps under --root (this sweep file's twin in another precision, whose scores "
        "are equal): a grid point finished there is left out here, neither run nor copied; `peftlab table --sweep "
        "a,b` joins the two",
    )  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftlab sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "sweep", help="sweep definition (JSON); with --status, the sweep's folder ROOT/<name> will do as well"
    )
    parser.add_argument(
        "--root", help=f"runs go to ROOT/<sweep name>/... (default {DEFAULT_ROOT}; required with --set)"
    )
    parser.add_argument(
        "--status", action="store_true",
        help="print where the sweep stands (runs finished, running and left, an ETA, its driver) and exit, starting "
        "nothing: for a sweep running elsewhere or stopped. SWEEP: its folder (e.g. runs/sweeps/NAME), or its file "
        "with --root",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="set one run option on every run of the grid (repeatable; VALUE as JSON when it parses, else a string), "
        "e.g. --set max_train_samples=64 --set num_train_epochs=1: for trying things, in a --root of its own",
    )  # fmt: skip
    parser.add_argument(
        "--progress_every", type=float, default=PROGRESS_EVERY, metavar="SECONDS",
        help="seconds between progress lines while jobs run (a line only when something changed; one at each job's "
        "end in any case)",
    )  # fmt: skip
    parser.add_argument("--dry_run", action="store_true", help="print the jobs and a CPU-time estimate, run nothing")
    parser.add_argument(
        "--gpu_tflops", type=float,
        help="with --dry_run: estimate hours on one GPU achieving this many TFLOP/s (a FLOP count; 18: what one H200 "
        "achieved in fp32 on roberta-base-shaped MRPC runs, docs/bench_gpu.md)",
    )  # fmt: skip
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", "../shared/glue"))
    add_selection_arguments(parser)
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
    """Keep the ``--tasks``, ``--seeds``, ``--variants``, ``--layers`` and ``--bottleneck_dims`` asked for (all but
    the variants in the order given)."""
    for key in ("tasks", "seeds", "variants", "layers", "bottleneck_dims"):
        if getattr(args, key):
            # the variants' names (a dict), or a list: the tasks, the seeds (42 by default), the layers, the sizes
            present = list(sweep.get(key, [42] if key == "seeds" else []))
            if not present:
                parser.error(f"--{key} {getattr(args, key)}: the sweep has no {key} (no per-{key[:-1]} variants)")
            try:
                chosen = [type(present[0])(v) for v in getattr(args, key).split(",")]
            except ValueError:
                parser.error(
                    f"--{key} {getattr(args, key)}: give a comma-separated list such as {present[0]},{present[-1]}"
                )
            unknown = [str(v) for v in chosen if v not in present]
            if unknown:
                parser.error(
                    f"--{key} {','.join(unknown)}: not in the sweep; its {key} are {', '.join(map(str, present))}"
                )
            if key == "variants":  # in the sweep's order
                sweep[key] = {name: v for name, v in sweep[key].items() if name in chosen}
            else:  # in the order given: cheap tasks first finish whole columns
                sweep[key] = list(dict.fromkeys(chosen))


def done_in(runs: list[Run], root: str | os.PathLike, sweeps: list[str]) -> set[str]:
    """The names of the unfinished ``runs`` whose grid point (task, variant, layer, bottleneck, seed: the run's name)
    has finished in one of the other ``sweeps`` under ``root``. For a sweep file's twin in
    another precision, whose scores equal this one's (docs/results.md A4): a point finished by one need not run in
    the other, and ``peftlab table --sweep a,b`` joins the two. A sweep with no folder under ``root``, or this
    sweep itself, is a :class:`ConfigError` naming the sweeps that are there."""
    root = Path(root)
    own = {run.point["sweep"] for run in runs}
    there = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for name in sweeps:
        if name in own:
            raise ConfigError(f"--done_in {name}: that is this sweep; name its twin (another sweep under {root}).")
        if name not in there:
            raise ConfigError(f"--done_in {name}: no sweep of that name under {root}; sweeps there: {', '.join(there) or 'none'}.")  # fmt: skip
    return {
        run.name
        for run in runs
        if not run.finished and any((root / name / run.name / RESULTS).is_file() for name in sweeps)
    }


def parse_overrides(items: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as a dict (the last of a key wins); VALUE read as JSON when it parses (64, 1e-4,
    true, "x", [1, 2], null), else as the string it is. The options the sweep sets itself are refused."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip().removeprefix("--")
        if not equals or not key:
            parser.error(f"--set {item}: give KEY=VALUE, e.g. --set max_train_samples=64")
        if key in (*SET_BY_THE_SWEEP, "method"):
            parser.error(
                f"--set {item}: {key} is set on every run by the sweep itself (output_dir from --root and the grid, "
                "task_name from --tasks, seed from --seeds, method from each variant)"
            )
        try:
            overrides[key] = json.loads(text)
        except ValueError:
            overrides[key] = text
    return overrides


def describe(overrides: dict[str, Any]) -> str:
    """The ``--set`` options as one would type them (a string quoted only where it would read as JSON)."""

    def text(value: Any) -> str:
        if isinstance(value, str):
            try:
                json.loads(value)
            except ValueError:
                return value
        return json.dumps(value)

    return " ".join(f"--set {key}={text(value)}" for key, value in overrides.items()) or "no --set"


def check_overrides(runs, overrides: dict[str, Any]) -> None:
    """Parse the first run with the ``--set`` options, by the parser every run is checked with
    (:func:`check_runs`): a bad key or value is one line naming --set (an unknown key with the closest names)."""
    from peftlab.lab.parsing import parse_args

    if not overrides or not runs:
        return
    try:
        parse_args(dict(runs[0].args))
    except ConfigError as err:
        message = str(err).split(": ", 1)[-1] if str(err).startswith("The arguments of run") else str(err)
        raise ConfigError(f"{describe(overrides)}: {message}") from None


def check_root(root: str, overrides: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    """Runs with ``--set`` go to a root of their own: not the default one, nor the committed results."""
    if not overrides:
        return
    if root is None:
        parser.error(
            f"{describe(overrides)}: runs with --set are not the sweep's runs of record; give them a --root of their"
            f" own (e.g. --root runs/trials), apart from {DEFAULT_ROOT} and docs/results/runs"
        )
    where = Path(root).resolve()
    for kept in (Path(DEFAULT_ROOT).resolve(), COMMITTED_ROOT):
        if where == kept or kept in where.parents:
            parser.error(
                f"{describe(overrides)}: --root {root} holds the sweeps' runs of record; give runs with --set a "
                "--root of their own (e.g. --root runs/trials)"
            )


def check_folder(folder: Path, overrides: dict[str, Any], dry_run: bool) -> None:
    """A sweep's folder holds runs made with one set of --set options (none included): refuse to add others, and
    record them (:data:`OVERRIDES`) where they are new."""
    record = folder / OVERRIDES
    if not overrides and not record.is_file():  # a sweep's runs of record
        return
    made_runs = any(folder.rglob("args.json"))
    if record.is_file() and made_runs:
        made = json.loads(record.read_text())
        if made != overrides:
            asked = f"runs with {describe(overrides)}" if overrides else "the sweep's runs of record (no --set)"
            raise ConfigError(
                f"{folder} holds runs made with {describe(made)} ({record}): run with the same --set, or give "
                f"{asked} another --root."
            )
        return
    if not overrides:
        if record.is_file() and not dry_run:  # an earlier start with --set that made no run
            record.unlink()
        return
    if made_runs:
        raise ConfigError(
            f"{folder} holds runs made without --set; give runs with {describe(overrides)} another --root."
        )
    if not dry_run:
        write_json(record, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.status:
        folder = Path(args.sweep)
        if not folder.is_dir():  # the sweep's file: its folder under --root
            folder = Path(args.root or DEFAULT_ROOT) / load_sweep(args.sweep)["name"]
        print(sweep_status(folder))
        return 0
    overrides = parse_overrides(args.overrides, parser)
    check_root(args.root, overrides, parser)
    args.root = args.root or DEFAULT_ROOT
    sweep = load_sweep(args.sweep)
    select(sweep, args, parser)
    source = f"Sweep file {args.sweep}" + (f" with {describe(overrides)}" if overrides else "")
    runs = expand(sweep, args.root, source)
    for run in runs:
        run.args.setdefault("glue_dir", args.glue_dir)
        run.args.update(overrides)  # in each run's args.json
    check_overrides(runs, overrides)
    if args.done_in:
        twins = done_in(runs, args.root, args.done_in.split(","))
        runs = [run for run in runs if run.name not in twins]
        print(f"{len(twins)} runs left out, finished in {args.done_in} (--done_in)")
    check_folder(Path(args.root) / sweep["name"], overrides, args.dry_run)
    if args.dry_run:
        check_runs([run for run in runs if not run.finished], source)
        return gpu_dry_run(runs, args) if args.gpu_tflops else dry_run(runs, args)
    # A terminated sweep stops its jobs (their unfinished runs are redone on the next start).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    options = {"address": args.address, "gpus_per_job": args.gpus_per_job, "threads": args.threads}
    left = run_sweep(
        runs, Path(args.root) / sweep["name"], workers=args.workers, backend=args.backend,
        reuse_root=None if args.no_reuse else args.root, source=source, progress_every=args.progress_every,
        **(options if args.backend == "ray" else {}),
    )  # fmt: skip
    finished = sum(run.finished for run in runs)
    elsewhere = [run.name for run in left if is_locked(run.output_dir)]  # another driver is training these
    failed = [run.name for run in left if run.name not in elsewhere]
    print(f"{finished} of {len(runs)} runs finished" + (f"; being trained by another process: {elsewhere}" if elsewhere else "") + (f"; not finished: {failed}" if failed else ""))  # fmt: skip
    return 1 if failed else 0
