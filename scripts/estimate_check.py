#!/usr/bin/env python
"""Check the sweep's CPU-time estimate (``--dry_run``) against finished jobs and runs, or fit its constants to them.

    python scripts/estimate_check.py docs/results/runs [--glue_dir ../shared/glue] [--fit]

Reads every finished sweep run under the roots (a folder with ``all_results.json``, ``args.json`` and
``sweep_point.json``) and every ended sweep job (``<root>/<sweep>/.jobs/<job>.json`` and its ``<job>.result.json``).
Costs are core-seconds of CPU time (``cpu_seconds``, all threads), which a busy machine does not inflate; runs made
before it was recorded are left out (their wall time counts waiting for the CPU too). Three kinds of measurement:

- a run: its CPU time against ``run_terms`` with the epochs it actually trained (early stopping ends some runs
  early);
- a fill job that computed something: its whole cost, against start-up plus one pass over its runs' data
  (``fill_terms``);
- a finished training job's remainder (its CPU time minus its runs'): start-up.

Prints, per task and method, the median ratio measured / estimated (runs with their actual epochs), the share of
their epochs that runs with early stopping trained, and the total of the finished jobs against the dry run's
estimate of the same jobs. ``--fit`` instead fits :data:`peftlab.lab.costmodel.COST` (least squares, relative errors
weighted equally) and :data:`peftlab.lab.costmodel.EPOCH_SHARE` (the mean share) and prints the constants to put there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from peftlab.lab.costmodel import COST, fill_terms, job_terms, precision_suffix, run_terms, seconds_of, workload
from peftlab.lab.sweepfile import Job, Run, effective_args


def core_seconds(record: dict, threads: int) -> float:
    """CPU time (all threads) where recorded, which the machine's load does not inflate; else wall x threads."""
    return record["cpu_seconds"] if "cpu_seconds" in record else record["wall_seconds"] * threads


def run_rows(roots: list[str], glue_dir: str) -> tuple[list[tuple[str, dict, float, Run]], list[float]]:
    """("run", terms, measured core-seconds, run) for every finished sweep run under the roots (a folder with
    ``all_results.json``, ``args.json`` and ``sweep_point.json``, and its CPU time recorded), whatever job ran it;
    and the epoch shares of the runs that could stop early."""
    rows, shares = [], []
    for root in roots:
        for path in sorted(Path(root).rglob("all_results.json")):
            folder = path.parent
            if not (folder / "args.json").is_file() or not (folder / "sweep_point.json").is_file():
                continue
            results = json.loads(path.read_text())
            if "cpu_seconds" not in results or "reused_from" in results:
                continue  # made before CPU time was recorded: their wall time counts a busy machine too
            run_args = json.loads((folder / "args.json").read_text())
            run = Run(name=str(folder), point=json.loads((folder / "sweep_point.json").read_text()), args=run_args)
            args = effective_args(run.args)
            epochs = (results.get("last_evaluation") or {}).get("epoch") or float(args.get("num_train_epochs", 3))
            if args.get("early_stopping_patience"):
                shares.append(epochs / float(args["num_train_epochs"]))
            terms = run_terms(run, workload(run, glue_dir), epochs=epochs)
            rows.append(("run", terms, core_seconds(results, results.get("threads", 1)), run))
    return rows, shares


def measurements(roots: list[str], glue_dir: str) -> tuple[list[tuple[str, dict, float, Run | None]], list, list]:
    """(kind, terms, measured core-seconds, run) rows for the fit (every finished run, every fill job that computed
    something, and the start-up of every finished training job); the finished jobs; epoch shares of runs that could
    stop early."""
    rows, shares = run_rows(roots, glue_dir)
    measured = {row[3].args["output_dir"]: row[2] for row in rows}
    jobs = []
    for root in roots:
        for job_path in sorted(p for p in Path(root).rglob(".jobs/*.json") if not p.name.endswith(".result.json")):
            result_path = job_path.with_suffix(".result.json")
            if not result_path.is_file():
                continue
            result, spec = json.loads(result_path.read_text()), json.loads(job_path.read_text())
            runs = [Run(name=r["args"]["output_dir"], point=r["point"], args=r["args"]) for r in spec["runs"]]
            job, seconds = Job(job_path.stem, runs, fill=spec["fill"]), core_seconds(result, result["threads"])
            if spec["fill"]:
                if result.get("fill_passes", 1) > 0:
                    rows.append(("fill", fill_terms(runs, workload(runs[0], glue_dir)), seconds, None))
                    jobs.append((job, seconds))
            elif all(o["outcome"] == "finished" for o in result["runs"]):
                inside = sum(measured.get(run.args["output_dir"], 0.0) for run in runs)
                startup = dict.fromkeys(COST, 0.0) | {"startup": 1.0}
                rows.append(("startup", startup, max(seconds - inside, 0.0), None))
                jobs.append((job, seconds))
    return rows, jobs, shares


def fit(rows) -> tuple[dict[str, float], float]:
    """Least-squares COST (clipped at 0), weighting relative errors equally, and its relative RMS error. A unit no
    measurement uses (a precision not run yet) keeps its current constant."""
    used = [unit for unit in COST if any(terms[unit] for _, terms, _, _ in rows)]
    matrix = np.array([[terms[unit] for unit in used] for _, terms, _, _ in rows])
    seconds = np.array([s for _, _, s, _ in rows])
    weights = 1.0 / np.maximum(seconds, 1.0)
    coef, *_ = np.linalg.lstsq(matrix * weights[:, None], seconds * weights, rcond=None)
    coef = np.clip(coef, 0.0, None)
    error = float(np.sqrt(np.mean(((matrix @ coef - seconds) * weights) ** 2)))
    return COST | dict(zip(used, coef.tolist())), error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="folders searched for sweep jobs (<sweep>/.jobs/)")
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", "../shared/glue"))
    parser.add_argument("--fit", action="store_true", help="fit the cost constants instead of checking them")
    args = parser.parse_args()
    rows, jobs, shares = measurements(args.roots, args.glue_dir)
    if not rows:
        parser.error(f"no finished sweep run or job under {', '.join(args.roots)}")
    share = statistics.fmean(shares) if shares else 1.0
    if args.fit:
        cost, error = fit(rows)
        print(f"{len(rows)} measurements ({sum(k == 'run' for k, *_ in rows)} runs, {len(jobs)} jobs); "
              f"relative RMS error {error:.2f}")  # fmt: skip
        print("COST = {" + ", ".join(f'"{u}": {c:.3g}' for u, c in cost.items()) + "}")
        kept = [unit for unit in COST if not any(terms[unit] for _, terms, _, _ in rows)]
        if kept:
            print(f"(not measured, kept: {', '.join(kept)})")
        print(f"EPOCH_SHARE = {share:.2f}  # over {len(shares)} runs with early stopping")
        return 0
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    for kind, terms, seconds, run in rows:
        if kind == "run":
            method = run.args["method"].split("@")[0] + precision_suffix(effective_args(run.args), training=True)
            ratios[(run.args["task_name"], method)].append(seconds / seconds_of(terms))
        else:
            ratios[("-", kind)].append(seconds / max(seconds_of(terms), 1e-9))
    print(f"{'task':6s} {'method':28s} {'n':>4s}  measured/estimated: median (min-max)")
    for (task, kind), values in sorted(ratios.items()):
        print(
            f"{task:6s} {kind:28s} {len(values):4d}  {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
        )
    print(f"\nruns with early stopping trained {share:.0%} of their epochs on average ({len(shares)} runs)")
    runs = [(seconds, seconds_of(terms)) for kind, terms, seconds, _ in rows if kind == "run"]
    print(f"{len(runs)} finished runs: measured {sum(m for m, _ in runs) / 3600:.2f} core-hours, estimated "
          f"{sum(e for _, e in runs) / 3600:.2f} with their actual epochs")  # fmt: skip
    if jobs:
        measured = sum(seconds for _, seconds in jobs)
        estimated = sum(seconds_of(job_terms(job, args.glue_dir)) for job, _ in jobs)
        print(f"{len(jobs)} finished jobs: measured {measured / 3600:.2f} core-hours, the dry run estimates "
              f"{estimated / 3600:.2f} (ratio {measured / estimated:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
