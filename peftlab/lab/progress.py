"""A sweep's progress as it runs, and read back from its folder by ``peftlab sweep --status``: runs finished,
running and left, and an ETA from the cost model corrected by what the ended jobs measured."""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError
from peftlab.io import write_json
from peftlab.lab.costmodel import COST, job_terms, run_terms, seconds_of, workload
from peftlab.lab.sweepfile import DRIVER, JOBS, RESULTS, REUSED, Job, Run

logger = logging.getLogger("peftlab")

PROGRESS_EVERY = 60.0
"""Seconds between the driver's progress lines while jobs run (a line only when something changed)."""


def _read_json(path: Path) -> Any:
    """A JSON file's content, or ``None`` where it is absent or not (yet) whole."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _estimated(estimate: Callable[[], float]) -> float | None:
    """An estimate, or ``None`` where it cannot be made: progress never stops a sweep, nor warns at every line."""
    try:
        return float(estimate())
    except Exception:
        return None


def _local_glue(run: Run) -> str | None:
    glue_dir = run.args.get("glue_dir")
    return str(glue_dir) if glue_dir and Path(glue_dir).is_dir() else None


def run_estimate(run: Run) -> float | None:
    """Estimated core-seconds ``run`` has left to train (less the epochs in its checkpoint; :func:`run_terms`), or
    ``None`` without its GLUE data at hand."""
    glue_dir = _local_glue(run)
    return None if glue_dir is None else _estimated(lambda: seconds_of(run_terms(run, workload(run, glue_dir))))


def job_estimate(job: Job) -> float | None:
    """Estimated core-seconds of ``job`` from now (:func:`job_terms`), or ``None`` without its GLUE data at hand."""
    glue_dir = _local_glue(job.runs[0]) if job.runs else None
    return None if glue_dir is None else _estimated(lambda: seconds_of(job_terms(job, glue_dir)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def _last_start(folder: Path) -> tuple[float, int, str] | None:
    """(time, pid, host) of the last event in a run folder's ``history.log`` when it is a start (no finish after)."""
    try:
        lines = (folder / "history.log").read_text().splitlines()
    except OSError:
        return None
    parts = lines[-1].split() if lines else []
    if len(parts) < 3 or parts[1] != "start":
        return None
    fields = dict(part.split("=", 1) for part in parts[2:] if "=" in part)
    try:
        return datetime.strptime(parts[0], "%Y-%m-%dT%H:%M:%S%z").timestamp(), int(fields["pid"]), fields["host"]
    except (KeyError, ValueError):
        return None


def running_runs(runs: list[Run], since: float | None = None) -> set[str]:
    """The folders of ``runs`` being trained now, from their ``history.log`` (no lock is taken: a run starting
    beside never finds its folder held): a run started (after ``since``) and not finished, the latest such run of
    each process (an earlier one of that process failed), and that process alive where it is on this host."""
    latest: dict[tuple[str, int], tuple[float, str]] = {}
    for run in runs:
        start = _last_start(run.output_dir)
        if start is None or (since is not None and start[0] < since - 2):  # history has whole seconds
            continue
        when, pid, host = start
        if (host, pid) not in latest or when >= latest[(host, pid)][0]:  # a tie: the later run in the job's order
            latest[(host, pid)] = (when, str(run.output_dir))
    here = platform.node()
    return {folder for (host, pid), (_, folder) in latest.items() if host != here or _alive(pid)}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


@dataclass
class Progress:
    """Where a sweep stands: its runs finished, being trained, failed (their job ended without them) and left; its
    jobs ended; and what is left in estimated core-seconds, with the ratio measured / estimated so far."""

    runs: int
    finished: int
    running: int
    failed: int
    jobs: int
    jobs_ended: int
    left_seconds: float | None
    """Estimated core-seconds of the jobs not ended; ``None`` where a run cannot be estimated."""
    ratio: float | None
    """Measured / estimated core-seconds of the jobs ended and the runs finished so far; ``None`` before any."""
    cores: int
    """Cores the jobs not ended use (threads per job x the jobs that can run side by side)."""

    @property
    def left(self) -> int:
        return self.runs - self.finished - self.running - self.failed

    @property
    def eta(self) -> float | None:
        """Wall seconds to the end: estimate left x ratio / cores."""
        if self.left_seconds is None:
            return None
        return self.left_seconds * (self.ratio or 1.0) / max(self.cores, 1)

    def key(self) -> tuple[int, ...]:
        return (self.finished, self.running, self.failed, self.jobs_ended)

    def line(self) -> str:
        failed = f"{self.failed} failed, " if self.failed else ""
        text = (
            f"progress: {self.finished} of {self.runs} runs finished, {self.running} running, {failed}{self.left} "
            f"left; jobs: {self.jobs_ended} of {self.jobs} ended"
        )
        if self.jobs_ended >= self.jobs:
            return text
        if self.eta is None:
            return f"{text}; ETA unknown (no cost estimate without the runs' local GLUE data)"
        correction = (
            f"x {self.ratio:.2f} measured/estimated so far" if self.ratio is not None else "nothing measured yet"
        )
        minutes = self.left_seconds / 60
        return (
            f"{text}; ETA {_duration(self.eta)} ({minutes:.{0 if minutes >= 10 else 1}f} estimated core-min left, "
            f"{correction}, on {self.cores} core{'s' if self.cores != 1 else ''})"
        )


def sweep_progress(
    runs: list[Run], jobs: list[Job], root: Path, *, ended: set[str], workers: int, threads: int,
    estimates: dict[str, float | None], cores: int | None = None, since: float | None = None,
) -> Progress:  # fmt: skip
    """The :class:`Progress` of the sweep in ``root`` whose driver planned ``jobs`` for ``runs`` (all its runs,
    finished ones included) and has seen the jobs named ``ended`` end; ``estimates``: each job's estimated
    core-seconds when it was planned. Runs finished inside a running job are seen in their folders, and runs being
    trained from their history (:func:`running_runs`, started after ``since``).

    Left: each job not ended at its estimate (a chunk: start-up plus the estimate of each unfinished run, less the
    epochs in its checkpoint). Ratio: measured / estimated over the fill jobs that computed something and the chunks
    whose runs all finished (wall seconds x threads, from their result files: a busy machine counts) and the runs
    finished in the jobs still running (from their ``all_results.json``). Cores: threads per job x the jobs not
    ended, at most ``workers`` of them (and at most ``cores``)."""
    results = {
        job.name: _read_json(job.file(root).with_suffix(".result.json")) or {} for job in jobs if job.name in ended
    }
    folders = {str(run.output_dir): run for run in runs}
    finished = {folder for folder, run in folders.items() if run.finished}
    failed = {
        str(Path(entry.get("output_dir", "")).resolve())
        for job in jobs
        if not job.fill
        for entry in results.get(job.name, {}).get("runs", [])
        if entry.get("outcome") == "failed"
    }  # a fill's failure fails no run: its chunks fill what they need themselves
    failed = {folder for folder, run in folders.items() if str(run.output_dir.resolve()) in failed} - finished
    open_jobs = [job for job in jobs if job.name not in ended]
    running = running_runs([run for job in open_jobs for run in job.runs if str(run.output_dir) not in finished], since)
    running &= set(folders)
    left: float | None = 0.0
    measured = estimated = 0.0
    for job in jobs:
        if job.name in ended:
            result, estimate = results.get(job.name) or {}, estimates.get(job.name)
            whole = all(entry.get("outcome") == "finished" for entry in result.get("runs", []))
            useful = result.get("fill_passes", 1) > 0 if job.fill else whole
            if estimate and "wall_seconds" in result and useful:
                measured += result["wall_seconds"] * result.get("threads", threads)
                estimated += estimate
            continue
        if job.fill:
            seconds = estimates.get(job.name)
        else:
            parts = [run_estimate(run) for run in job.runs if not run.finished]
            seconds = None if None in parts else COST["startup"] + sum(parts)
        left = None if left is None or seconds is None else left + seconds
        for run in job.runs:
            if str(run.output_dir) in finished and not (run.output_dir / REUSED).is_file():
                record, estimate = _read_json(run.output_dir / RESULTS) or {}, run_estimate(run)
                if estimate and record.get("wall_seconds"):
                    measured += record["wall_seconds"] * record.get("threads", threads)
                    estimated += estimate
    side_by_side = max(1, min(workers, len(open_jobs)))
    return Progress(
        runs=len(folders), finished=len(finished), running=len(running), failed=len(failed), jobs=len(jobs),
        jobs_ended=len(jobs) - len(open_jobs), left_seconds=left, ratio=measured / estimated if estimated else None,
        cores=min(threads * side_by_side, cores or threads * side_by_side),
    )  # fmt: skip


class Tracker:
    """The driver's progress lines: one after each job's end, and one every ``every`` seconds while jobs run when
    something changed (a run finished or started, a job ended). Writes :data:`DRIVER` for ``--status``."""

    def __init__(
        self, runs: list[Run], jobs: list[Job], root: Path, *, workers: int, threads: int, log: Callable[[str], None],
        backend: str = "local", cores: int | None = None,
    ) -> None:  # fmt: skip
        self.runs, self.jobs, self.root, self.log = runs, jobs, root, log
        self.workers, self.threads, self.cores = workers, threads, cores
        self.started = time.time()
        self.estimates = {job.name: job_estimate(job) for job in jobs}
        self.ended: set[str] = set()
        self.last: tuple[int, ...] | None = None
        self.lock = threading.Lock()
        self.record = {
            "pid": os.getpid(), "host": platform.node(), "started": self.started, "ended": None, "backend": backend,
            "workers": workers, "threads": threads, "cores": cores, "runs": [str(run.output_dir.absolute()) for run in runs],
            "jobs": self.estimates,
        }  # fmt: skip
        write_json(root / JOBS / DRIVER, self.record)

    def progress(self) -> Progress:
        return sweep_progress(
            self.runs, self.jobs, self.root, ended=set(self.ended), workers=self.workers, threads=self.threads,
            estimates=self.estimates, cores=self.cores, since=self.started,
        )  # fmt: skip

    def report(self, always: bool = False) -> None:
        try:
            with self.lock:
                progress = self.progress()
                if always or progress.key() != self.last:
                    self.last = progress.key()
                    self.log(progress.line())
        except Exception as err:  # a progress line never stops a sweep
            logger.warning("No progress line: %s: %s", type(err).__name__, err)

    def job_ended(self, job: Job, code: int) -> None:
        self.ended.add(job.name)
        self.report(always=True)

    def watch(self, every: float, stop: threading.Event) -> None:
        while not stop.wait(every):
            self.report()

    def close(self) -> None:
        try:
            write_json(self.root / JOBS / DRIVER, {**self.record, "ended": time.time()})
        except OSError as err:
            logger.warning("Could not mark the sweep's driver file ended: %s", err)


def _located(folder: Path, output_dir: str) -> str:
    """A run folder named in a job or driver file, resolved: one relative to the driver's working directory is taken
    under ``folder`` (the driver may have run from elsewhere than ``--status``)."""
    path = Path(output_dir)
    if not path.is_absolute() and folder.name in path.parts:
        path = folder.joinpath(*path.parts[len(path.parts) - path.parts[::-1].index(folder.name) :])
    return str(path.resolve())


def _read_jobs(folder: Path) -> tuple[dict[str, Job], float | None]:
    """The jobs in the job files of the sweep in ``folder`` (by name; files not whole yet are skipped), and the
    newest job file's modification time (``None`` without any): what ``--status`` reads back of the plan."""
    jobs_dir = folder / JOBS
    jobs: dict[str, Job] = {}
    newest = None
    for path in sorted(jobs_dir.glob("*.json")) if jobs_dir.is_dir() else []:
        if path.name.endswith(".result.json") or path.name == DRIVER:
            continue
        spec = _read_json(path)
        if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list):
            continue
        runs = []
        for entry in spec["runs"]:
            args = {**entry["args"], "output_dir": _located(folder, entry["args"]["output_dir"])}
            runs.append(Run(name=args["output_dir"], point=entry.get("point", {}), args=args))
        jobs[path.stem] = Job(path.stem, runs, fill=bool(spec.get("fill")))
        newest = max(newest or 0.0, path.stat().st_mtime)
    return jobs, newest


def _planned(
    folder: Path, driver: dict | None, jobs: dict[str, Job]
) -> tuple[list[Job], list[Run], dict[str, float | None]]:
    """The jobs, runs and job estimates the last driver planned in ``folder``, from its :data:`DRIVER` file; without
    one, every job file's jobs, their runs and any other run folder, estimated now. No run at all is a
    :class:`ConfigError`."""
    if driver is not None:
        chosen = [jobs[name] for name in driver.get("jobs", {}) if name in jobs]
        folders = [_located(folder, f) for f in driver.get("runs", [])]
        estimates = dict(driver.get("jobs", {}))
    else:
        chosen = list(jobs.values())
        seen = [str(p.parent) for p in sorted(folder.rglob("sweep_point.json")) if JOBS not in p.parts]
        folders = [*dict.fromkeys([*(str(r.output_dir) for job in chosen for r in job.runs), *seen])]
        estimates = {job.name: job_estimate(job) for job in chosen}
    known = {str(run.output_dir): run for job in chosen for run in job.runs}
    runs = [known.get(f) or Run(name=f, point={}, args={"output_dir": f}) for f in folders]
    if not runs:
        raise ConfigError(f"{folder}: no sweep has run here (no {JOBS}/ job files and no run folders).")
    return chosen, runs, estimates


def _driver_settings(
    folder: Path, driver: dict | None, chosen: list[Job], ended: set[str], newest: float | None
) -> tuple[int, int, int | None, float | None]:
    """(workers, threads, cores, since) of the sweep's driver for :func:`sweep_progress`: from its :data:`DRIVER`
    file, or guessed without one (the threads of the ended jobs, one worker per process training a run now, runs
    started since the newest job file)."""
    if driver is not None:
        return int(driver.get("workers", 1)), int(driver.get("threads", 1)), driver.get("cores"), driver.get("started")
    threads = max([(_read_json(job.file(folder).with_suffix(".result.json")) or {}).get("threads", 1)
                   for job in chosen if job.name in ended] or [1])  # fmt: skip
    open_runs = [run for job in chosen if job.name not in ended for run in job.runs if not run.finished]
    workers = max(1, len(running_runs(open_runs, newest)))  # one running run per job process
    return workers, threads, None, newest


def _driver_state(driver: dict) -> str:
    """What ``--status`` adds about the driver: when it ended, that it was stopped (its process gone from this
    host), or which process on which host runs it."""
    pid, host = driver.get("pid"), driver.get("host")
    if driver.get("ended"):
        return f"its driver ended at {time.strftime('%Y-%m-%d %H:%M', time.localtime(driver['ended']))}"
    if host == platform.node() and isinstance(pid, int) and not _alive(pid):
        return f"its driver (pid {pid}) is not running: it was stopped, a rerun finishes the sweep"
    return f"its driver: pid {pid} on {host}"


def sweep_status(folder: str | os.PathLike) -> str:
    """The progress line of the sweep whose folder (``--root/<name>``) is ``folder``, running or not, from its
    :data:`DRIVER` file, its job files and their result files, and its run folders; starts and writes nothing.
    Without a :data:`DRIVER` file (a driver older than it) every job file counts, and the cores are guessed from the
    processes training runs now. Ends with the driver's state where it is known."""
    folder = Path(folder).resolve()
    jobs_dir = folder / JOBS
    driver = _read_json(jobs_dir / DRIVER) if jobs_dir.is_dir() else None
    jobs, newest = _read_jobs(folder)
    chosen, runs, estimates = _planned(folder, driver, jobs)
    ended = {job.name for job in chosen if job.file(folder).with_suffix(".result.json").is_file()}
    workers, threads, cores, since = _driver_settings(folder, driver, chosen, ended, newest)
    line = sweep_progress(
        runs, chosen, folder, ended=ended, workers=workers, threads=threads, estimates=estimates, cores=cores,
        since=since,
    ).line()  # fmt: skip
    return line if driver is None else f"{line}; {_driver_state(driver)}"
