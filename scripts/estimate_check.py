#!/usr/bin/env python
"""Check the sweep's CPU-time estimate (``--dry_run``) against finished runs, or fit its constants to them.

    python scripts/estimate_check.py runs/sweeps [--glue_dir ../shared/glue] [--fit]

Reads every run under the roots that has ``args.json`` and ``wall_seconds.txt`` (runs copied from a twin have no
wall time and are left out). Its cost in core-seconds is its wall time times the threads it had (``threads.txt``,
written by the sweep runner; ``--threads`` for runs made before it was, default 1: two runs side by side on two
cores). Whether it filled its frozen-prefix cache is read from its log. Prints, per task and method, the median
ratio measured / estimated; ``--fit`` instead fits :data:`peftlab.sweep.COST` by least squares and prints the
constants to put there.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.sweep import COST, Run, cost_terms, estimate_seconds, workload  # noqa: E402


def measured_runs(roots: list[str], glue_dir: str, threads: int) -> list[tuple[Run, object, bool, float]]:
    """(run, workload, filled its cache, measured core-seconds) of every timed run under ``roots``."""
    found = []
    for root in roots:
        for wall in sorted(Path(root).rglob("wall_seconds.txt")):
            folder = wall.parent
            run = Run(name=str(folder), point={}, args=json.loads((folder / "args.json").read_text()))
            log = folder / "log.txt"
            filled = log.is_file() and "Frozen-prefix cache written" in log.read_text(errors="replace")
            cores = int((folder / "threads.txt").read_text()) if (folder / "threads.txt").is_file() else threads
            found.append((run, workload(run, glue_dir), filled, float(wall.read_text()) * cores))
    return found


def fit(found: list[tuple[Run, object, bool, float]]) -> tuple[dict[str, float], float]:
    """Least-squares COST (clipped at 0), weighting relative errors equally, and its relative RMS error."""
    units = list(COST)
    rows = np.array([[cost_terms(run, load, filled)[unit] for unit in units] for run, load, filled, _ in found])
    seconds = np.array([s for *_, s in found])
    weights = 1.0 / seconds  # a 10 s run matters as much as a 10 min one
    coef, *_ = np.linalg.lstsq(rows * weights[:, None], seconds * weights, rcond=None)
    coef = np.clip(coef, 0.0, None)
    error = float(np.sqrt(np.mean(((rows @ coef - seconds) * weights) ** 2)))
    return dict(zip(units, coef.tolist())), error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="folders searched for finished runs")
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", "../shared/glue"))
    parser.add_argument("--threads", type=int, default=1, help="threads per run where threads.txt is absent")
    parser.add_argument("--fit", action="store_true", help="fit the cost constants instead of checking them")
    args = parser.parse_args()
    found = measured_runs(args.roots, args.glue_dir, args.threads)
    if not found:
        parser.error(f"no finished run with wall_seconds.txt under {', '.join(args.roots)}")
    if args.fit:
        cost, error = fit(found)
        print(f"{len(found)} runs; relative RMS error {error:.2f}")
        print("COST = {" + ", ".join(f'"{u}": {c:.3g}' for u, c in cost.items()) + "}")
        return 0
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run, load, filled, seconds in found:
        kind = run.args["method"].split("@")[0] + (" (fills cache)" if filled else "")
        ratios[(run.args["task_name"], kind)].append(seconds / estimate_seconds(run, load, filled))
    print(f"{'task':6s} {'method':24s} {'runs':>4s}  measured/estimated: median (min-max)")
    for (task, kind), values in sorted(ratios.items()):
        print(
            f"{task:6s} {kind:24s} {len(values):4d}  {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
        )
    everything = [v for values in ratios.values() for v in values]
    print(f"\nall: {len(everything)} runs, median ratio {statistics.median(everything):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
