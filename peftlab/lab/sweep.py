"""Sweeps: a grid of runs described in one JSON file, run as jobs on a local process pool or on Ray, resumable.

A sweep file looks like::

    {
      "name": "layer_sweep_mrpc",
      "protocol": "paper",
      "tasks": ["mrpc"],
      "seeds": [42],
      "layers": [0, 1, 2, 3, 4, 5],
      "variants": {
        "adapter_ffn": {"method": "adapter", "per_layer": true, "placement": "ffn"},
        "raw_mean": {"method": "probe", "pooling": "mean"},
        "finetune": {"method": "full"}
      },
      "common": {"cache_frozen_prefix": true},
      "task_args": {"sst2": {"num_train_epochs": 1}}
    }

Axes: seed x task x variant x layer (``layers``, variants with ``per_layer``) x bottleneck (``bottleneck_dims``,
variants with ``per_bottleneck``) x pooling (``poolings``, variants with ``per_pooling``; such a variant becomes
one row per pooling, named ``<variant>_<pooling>``). A variant's ``method`` gets ``@<layer>`` when it is per layer;
``{layer}`` and ``{next_layer}`` inside any string option are filled in (for strategies such as
``adapter@{layer},{next_layer}``). Arguments are merged in the order: :data:`DEFAULTS` and the sweep's
``protocol`` (a ``--protocol`` preset, see :mod:`peftlab.lab.protocols`, applied by each run), the task's offline
protocol (unless the sweep says ``"offline": false``), ``common``, ``task_args``, the variant, the grid values.
A file with ``"extends": "other.json"`` and a ``name`` of its own is that sweep with its keys laid over
(``common``, and each variant's and task's options, gain entries; other keys are replaced): e.g.
``scripts/sweeps/table1_paper_bf16.json`` is ``table1_paper.json`` in bfloat16 (:func:`load_sweep`).

How a sweep runs (:func:`run_sweep`). The driver alone decides what runs: it skips finished runs, copies the
results of identical finished runs (:func:`fingerprint`), and cuts the rest into jobs. Runs that read the same
data (task and data options) form a *group*. With one worker a group is one job: ONE process that loads data and
model once, fills every frozen-prefix cache its runs read in one pass per split (:mod:`peftlab.cache`) and trains
the runs one after another (:func:`peftlab.lab.run.run_many`). With several, a fill job computes the caches first,
then the group's runs go in chunks (one per seed, split further to keep every worker busy, into chunks of about
equal estimated cost where the data is local: :func:`balance`), one process each.
Jobs go to a local thread pool that starts one process per job (``--backend local``) or to Ray tasks with declared
CPUs and GPUs (``--backend ray``, one machine or a cluster); a chunk is started once its group's fill job has
ended. A run's folder is written only by the process that trains it, under an OS lock on the folder (released when
the process dies however it dies), and every job process dies with the driver, so a killed sweep leaves no run
behind and a rerun finishes what is left. As jobs report, the driver prints one progress line (runs finished, running
and left; an ETA from the cost model corrected by what this sweep measured so far: :class:`peftlab.lab.progress.Progress`), and
:func:`peftlab.lab.progress.sweep_status` prints the same from a sweep's folder for a sweep running elsewhere.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import logging
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError
from peftlab.io import write_json
from peftlab.lab.costmodel import run_cost
from peftlab.lab.progress import PROGRESS_EVERY, Tracker
from peftlab.lab.sweepfile import (
    RESULTS,
    REUSED,
    Job,
    Run,
    as_flags,
    check_runs,
    check_sweep,
    effective_args,
    extend_sweep,
    run_args,
)

logger = logging.getLogger("peftlab")

NOT_IN_FINGERPRINT = ("output_dir", "resumable", "resumable_minutes")
"""Arguments that do not change a run's results: where it writes, whether and how often it writes a checkpoint to
resume from (a resumed run ends as if never stopped, so a run with and without ``resumable`` is the same run)."""
DATA_KEYS = ("task_name", "train_split", "split_dev", "split_seed", "max_train_samples", "max_eval_samples",
             "max_seq_length", "model_name_or_path", "glue_dir")  # fmt: skip
"""The arguments that decide a run's data and frozen backbone: runs equal in all of them form one group."""

COPIED_WHEN_REUSED = (RESULTS, "run_config.json", "trainer_state.json")


# --------------------------------------------------------------------------------------------------------------
# Identical runs
# --------------------------------------------------------------------------------------------------------------
@functools.cache
def _argument_defaults() -> dict[str, Any]:
    from peftlab.lab.parsing import ARGUMENT_CLASSES  # imports transformers: only when needed

    defaults: dict[str, Any] = {}
    for cls in ARGUMENT_CLASSES:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults.setdefault(f.name, f.default)
    return defaults


def fingerprint(args: dict[str, Any]) -> str:
    """What makes two runs the same run: every argument (protocol preset filled in) but
    :data:`NOT_IN_FINGERPRINT`, with arguments equal to their default left out (``placement: ffn`` and no placement
    are one run) and numbers compared as numbers."""
    defaults = _argument_defaults()

    def is_default(key: str, value: Any) -> bool:
        if key not in defaults:
            return False
        default = defaults[key]
        return value == default or value == getattr(default, "value", object())

    def number(value: Any) -> Any:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    kept = {
        k: number(v) for k, v in effective_args(args).items() if k not in NOT_IN_FINGERPRINT and not is_default(k, v)
    }
    return json.dumps(kept, sort_keys=True)


def finished_runs(root: str | os.PathLike) -> dict[str, Path]:
    """Finished runs under ``root`` (every sweep) that ran themselves (not copied from a twin), by fingerprint."""
    done: dict[str, Path] = {}
    for args_path in sorted(Path(root).rglob("args.json")):
        folder = args_path.parent
        if (folder / RESULTS).is_file() and not (folder / REUSED).is_file():
            done.setdefault(fingerprint(json.loads(args_path.read_text())), folder)
    return done


def reuse(run: Run, source: Path) -> None:
    """Fill ``run`` with the results of the identical finished run ``source`` (no weights), and say so."""
    from peftlab.io import output_lock

    with output_lock(run.output_dir):
        write_json(run.output_dir / "args.json", run.args)
        write_json(run.output_dir / "sweep_point.json", run.point)
        (run.output_dir / REUSED).write_text(f"{source}\n")
        for name in COPIED_WHEN_REUSED[::-1]:  # the results file last: it is what marks the run finished
            if (source / name).is_file():
                (run.output_dir / f".{name}.tmp").write_bytes((source / name).read_bytes())
                os.replace(run.output_dir / f".{name}.tmp", run.output_dir / name)


# --------------------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------------------
def group_key(run: Run) -> tuple:
    return tuple(json.dumps(run.args.get(k)) for k in DATA_KEYS)


def plan_jobs(runs: list[Run], workers: int, cost: Callable[[Run], float | None] | None = None) -> list[Job]:
    """Cut ``runs`` into jobs, in the runs' order, per group of runs reading the same data.

    One worker: one job per group, which fills every cache its runs read in one pass per split and then trains
    them all (one start-up per group). Several workers: a fill job (when any run uses the frozen-prefix cache), then
    chunks of runs, one per seed, split further so that a group has at least ``workers`` chunks when it has that
    many runs; the chunks start once the fill has ended, so that none of them computes a cache beside another.
    With ``cost`` (a run's estimated core-seconds, e.g. :func:`run_cost`; ``None`` where it cannot tell), a seed's
    chunks are of about equal cost instead of equal length (:func:`balance`): full fine-tuning and the adapters do
    not all land in one chunk that the others then wait for."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    jobs: list[Job] = []
    for number, members in enumerate(groups.values(), start=1):
        task = members[0].args["task_name"]
        if workers <= 1:
            jobs.append(Job(f"{task}-{number}", members))
            continue
        fill = None
        if any(run.args.get("cache_frozen_prefix") for run in members):
            fill = Job(f"{task}-{number}-fill", [r for r in members if r.args.get("cache_frozen_prefix")], fill=True)
            jobs.append(fill)
        size = max(1, math.ceil(len(members) / workers))
        by_seed: dict[Any, list[Run]] = {}
        for run in members:
            by_seed.setdefault(run.args.get("seed"), []).append(run)
        for seed, seed_runs in by_seed.items():
            parts = math.ceil(len(seed_runs) / size)
            costs = [cost(run) for run in seed_runs] if cost is not None and parts > 1 else None
            if costs is None or None in costs:
                chunks = [seed_runs[start : start + size] for start in range(0, len(seed_runs), size)]
            else:
                chunks = balance(seed_runs, costs, parts)
            for index, chunk in enumerate(chunks, start=1):
                jobs.append(Job(f"{task}-{number}-seed{seed}-{index}", chunk, after=fill))
    return jobs


def balance(runs: list[Run], costs: list[float], parts: int) -> list[list[Run]]:
    """``runs`` cut into ``parts`` chunks of about equal total cost: the costliest run first, each into the chunk
    with the least so far (longest-processing-time first). Each chunk keeps the runs' order; the costliest chunk
    comes first (it is started first)."""
    loads, members = [0.0] * parts, [[] for _ in range(parts)]
    for index in sorted(range(len(runs)), key=lambda i: -costs[i]):
        least = loads.index(min(loads))
        members[least].append(index)
        loads[least] += costs[index]
    ranked = sorted(range(parts), key=lambda k: -loads[k])
    return [[runs[i] for i in sorted(members[k])] for k in ranked if members[k]]


def write_job_file(job: Job, root: Path) -> Path:
    path = job.file(root)
    path.with_suffix(".result.json").unlink(missing_ok=True)  # an earlier start's: never read as this one's
    write_json(path, {"fill": job.fill, "runs": [{"args": r.args, "point": r.point} for r in job.runs]})
    return path


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the job process gets SIGKILL when the process that started it dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_CHILDREN: set[subprocess.Popen] = set()
"""Job processes running now (stopped when the driver stops; a killed driver takes them along: PDEATHSIG)."""


def run_job_process(job_file: str | os.PathLike, env: dict[str, str], python: str = sys.executable) -> int:
    """Run one job file in a child process (``python -m peftlab.lab.job``) that dies with this one; its output goes
    to the job's log beside the file. Returns its exit code."""
    job_file = Path(job_file)
    if not job_file.is_file():
        raise FileNotFoundError(
            f"{job_file} is not visible on {socket.gethostname()}: every worker must see the sweep's --root "
            "(a shared filesystem) for its runs to land where the driver looks for them."
        )
    repo = Path(__file__).resolve().parents[2]
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))}
    with open(job_file.with_suffix(".log"), "a") as log:
        proc = subprocess.Popen(
            [python, "-m", "peftlab.lab.job", str(job_file)], stdout=log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )  # fmt: skip
        _CHILDREN.add(proc)
        try:
            return proc.wait()
        finally:
            _CHILDREN.discard(proc)


def stop_children() -> None:
    """Stop every job process this driver started (their runs are redone by the next start)."""
    for proc in list(_CHILDREN):
        proc.terminate()
    for proc in list(_CHILDREN):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def job_env(workers: int, threads: int | None = None) -> dict[str, str]:
    """The environment of a job: ``threads`` per job (default ``cores // workers``) unless OMP_NUM_THREADS is set,
    so that jobs side by side share the cores instead of each starting a thread per core."""
    env = dict(os.environ)
    threads = threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def report_failures(job: Job, root: Path, code: int, log: Callable[[str], None]) -> None:
    """After a job that failed, each failed run's one-line reason (from the job's result file) and where its log is:
    the driver's own output says what went wrong, not only an exit code."""
    if code == 0:
        return
    result = job.file(root).with_suffix(".result.json")
    logfile = job.file(root).with_suffix(".log")
    try:
        runs = json.loads(result.read_text())["runs"] if result.is_file() else []
    except (OSError, ValueError, KeyError):
        runs = []
    failed = [r for r in runs if r.get("outcome") == "failed"]
    for entry in failed:
        log(
            f"  failed {Path(entry['output_dir']).relative_to(root) if Path(entry['output_dir']).is_relative_to(root) else entry['output_dir']}: {entry.get('error', 'see the log')}"
        )
    if not failed:
        lines = logfile.read_text(errors="replace").strip().splitlines() if logfile.is_file() else []
        log(f"  the job process ended with exit {code}" + (f": {lines[-1]}" if lines else ""))
    log(f"  log: {logfile}")


def run_local(
    jobs: list[Job], root: Path, workers: int, log: Callable[[str], None], python: str,
    on_end: Callable[[Job, int], None] | None = None,
) -> None:  # fmt: skip
    """Jobs on a pool of ``workers`` threads, each starting one process per job; a chunk is submitted when its
    fill job has ended (whatever its outcome: a chunk whose caches are missing fills them itself). ``on_end(job,
    exit code)`` is called as each job ends (the driver's progress line)."""
    env = job_env(workers)
    pool = ThreadPoolExecutor(max_workers=workers)
    submitted: queue.Queue[Future] = queue.Queue()
    stopping = threading.Event()  # set once we stop waiting: a fill ending afterwards starts no chunk
    chunks: dict[str, list[Job]] = {}
    for job in jobs:
        if job.after is not None:
            chunks.setdefault(job.after.name, []).append(job)

    def submit(job: Job) -> None:
        def work() -> int:
            log(f"start {job.name} ({len(job.runs)} runs{', fill' if job.fill else ''})")
            code = run_job_process(job.file(root), env, python)
            log(f"end {job.name} (exit {code})")
            report_failures(job, root, code, log)
            if on_end is not None:
                on_end(job, code)
            return code

        future = pool.submit(work)
        if job.name in chunks:
            future.add_done_callback(lambda _: stopping.is_set() or [submit(chunk) for chunk in chunks[job.name]])
        submitted.put(future)

    try:
        for job in jobs:
            if job.after is None:
                submit(job)
        for _ in jobs:  # callbacks submit the chunks while we wait
            submitted.get().result()
    finally:
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        stop_children()


def run_ray(
    jobs: list[Job], root: Path, workers: int, log: Callable[[str], None], python: str,
    address: str | None = None, gpus_per_job: float = 0, threads: int | None = None,
    on_end: Callable[[Job, int], None] | None = None,
) -> None:  # fmt: skip
    """Jobs as Ray tasks with ``threads`` CPUs (and ``gpus_per_job`` GPUs) each, on a local Ray or the cluster at
    ``address``; a chunk takes its fill job's result as an argument, so Ray starts it once the fill has ended. Each
    job's end is logged (and ``on_end`` called) as it comes."""
    import ray

    threads = threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
    if not ray.is_initialized():
        init = {"address": address} if address else {"num_cpus": workers * threads}
        ray.init(**init, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    env = job_env(workers, threads)

    @ray.remote(max_retries=0)
    def job_task(job_file: str, _after: int | None = None) -> int:
        return run_job_process(job_file, env, python)

    refs: dict[str, Any] = {}
    for job in jobs:
        after = refs.get(job.after.name) if job.after else None
        task = job_task.options(num_cpus=threads, num_gpus=gpus_per_job, name=job.name)
        refs[job.name] = task.remote(str(job.file(root)), after)
        log(f"submitted {job.name} ({len(job.runs)} runs{', fill' if job.fill else ''})")
    pending = {ref: job for job, ref in zip(jobs, refs.values())}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job, code = pending.pop(ref), ray.get(ref)
                log(f"end {job.name} (exit {code})")
                report_failures(job, root, code, log)
                if on_end is not None:
                    on_end(job, code)
    except BaseException:
        for ref in refs.values():
            ray.cancel(ref, force=True)
        raise


BACKENDS = ("local", "ray")


def _reuse_identical(todo: list[Run], reuse_root: str | os.PathLike, log: Callable[[str], None]) -> None:
    """Take out of ``todo`` each run whose arguments equal those of a run finished under ``reuse_root``, copying that
    run's results in (:func:`reuse`): sweeps overlap, and a run finished elsewhere need not train again."""
    done = finished_runs(reuse_root)
    for run in list(todo):
        source = done.get(fingerprint(run.args))
        if source is not None and source.resolve() != run.output_dir.resolve():
            reuse(run, source)
            todo.remove(run)
            log(f"reuse {run.name}: identical to the finished {source}")


def _job_threads(workers: int, backend: str, ray_options: dict[str, Any]) -> int:
    """The threads each job runs with, for the ETA: as :func:`job_env` gives them (the cores shared among the
    workers, or ``OMP_NUM_THREADS`` where it is set), or Ray's ``threads`` option with the Ray backend."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    if backend == "ray":
        return ray_options.get("threads") or threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return threads


def run_sweep(
    runs: list[Run], root: str | os.PathLike, *, workers: int = 1, backend: str = "local", log=print,
    reuse_root: str | os.PathLike | None = None, python: str = sys.executable, source: str = "Sweep",
    progress_every: float = PROGRESS_EVERY, **ray_options: Any,
) -> list[Run]:  # fmt: skip
    """Run the unfinished runs of one sweep (all under ``root``); returns those not finished at the end. Every
    run's arguments are parsed first (:func:`peftlab.lab.sweepfile.check_runs`): a bad option stops the sweep before
    its first job, in a line naming ``source``, the variant and the key.

    With ``reuse_root``, a run whose arguments equal those of a run already finished anywhere under that folder is
    not run again: its results are copied in, with ``reused_from.txt`` naming the source (sweeps overlap: Table 1's
    MRPC rows are points of the MRPC layer sweep).

    While jobs run, ``log`` gets a progress line (:class:`peftlab.lab.progress.Progress`: runs finished, running and left, and an ETA
    from the cost model corrected by what the ended jobs measured) after each job's end and every
    ``progress_every`` seconds when something changed; ``.jobs/driver.json`` says what this start planned, for
    ``peftlab sweep --status`` (:func:`peftlab.lab.progress.sweep_status`)."""
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}.")
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not valid; choose one of {', '.join(BACKENDS)}.")
    root = Path(root)
    todo = [run for run in runs if not run.finished]
    check_runs(todo, source)
    if reuse_root is not None and todo:
        _reuse_identical(todo, reuse_root, log)
    log(f"{len(runs) - len(todo)} of {len(runs)} runs finished; {len(todo)} to run")
    if not todo:
        return []
    jobs = plan_jobs(todo, workers, cost=run_cost)
    for job in jobs:
        write_job_file(job, root)
    start = time.time()
    threads = _job_threads(workers, backend, ray_options)
    tracker = Tracker(
        runs, jobs, root, workers=workers, threads=threads, log=log, backend=backend,
        cores=os.cpu_count() if backend == "local" else None,
    )  # fmt: skip
    tracker.report(always=True)
    stop = threading.Event()
    watcher = threading.Thread(target=tracker.watch, args=(progress_every, stop), name="sweep-progress", daemon=True)
    watcher.start()
    try:
        if backend == "local":
            run_local(jobs, root, workers, log, python, on_end=tracker.job_ended)
        else:
            run_ray(jobs, root, workers, log, python, on_end=tracker.job_ended, **ray_options)
    finally:
        stop.set()
        watcher.join(timeout=5)
        tracker.close()
    log(f"{len(jobs)} jobs in {time.time() - start:.0f} s")
    return [run for run in todo if not run.finished]


def load_sweep(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The JSON object of a sweep file, checked whole (:func:`peftlab.lab.sweepfile.check_sweep`); a file with
    ``"extends": "<file>"`` (relative to its own folder) is laid over that one first (:func:`extend_sweep`)."""
    path = Path(path)
    try:
        sweep = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"Cannot read sweep file {path}: {err}") from None
    if isinstance(sweep, dict) and "extends" in sweep:
        base = sweep.pop("extends")
        if not isinstance(base, str) or not base:
            raise ConfigError(f"Sweep file {path}: 'extends' is {base!r}; give the path of another sweep file.")
        if path.resolve() in _seen:
            raise ConfigError(f"Sweep file {path} extends itself through {' -> '.join(map(str, _seen))}.")
        sweep = extend_sweep(sweep, load_sweep(path.parent / base, (*_seen, path.resolve())), f"Sweep file {path}")
    check_sweep(sweep, f"Sweep file {path}")
    return sweep


if __name__ == "__main__":  # python -m peftlab.lab.sweep TASK METHOD [--protocol P] [--no_offline]: one flag a line
    import argparse

    parser = argparse.ArgumentParser(description="Print run_glue.py's default flags for one run (scripts/glue.sh).")
    parser.add_argument("task")
    parser.add_argument("method")
    parser.add_argument("--protocol", default="paper")
    parser.add_argument("--no_offline", action="store_true", help="leave out the task's offline protocol")
    cli = parser.parse_args()
    defaults = run_args(cli.task, cli.method, protocol=cli.protocol, offline=not cli.no_offline)
    defaults.pop("save_model")  # a one-off run keeps its weights
    defaults.pop("disable_tqdm")  # and shows its progress bars
    print("\n".join(as_flags(defaults)))
