#!/usr/bin/env python
"""What choosing the trained entries costs, per row of a sweep, in units of one run: the seconds a run spends before
training on choosing what trains (``prepare_seconds``: Fisher's gradient batches, LT-SFT's dense phase, a pruned
adapter's SNIP scores; 0 for random and magnitude masks) and their share of the run's whole CPU time
(``cpu_seconds``), over the sweep's finished runs.

    python scripts/selection_cost.py docs/results/runs.csv --sweep table1_paper_sparse_bf16 [--out OUT]

Sweep workers run one thread each, so a run's selection seconds (wall time) are CPU seconds there too. Runs that
recorded no selection time (made before runs recorded it, or copied from an identical run) are left out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from peftlab.io import atomic_write_text
from peftlab.lab.results import read_csv, render


def selection_costs(rows, sweeps: list[str]) -> dict[str, dict]:
    """Per variant: its runs' tasks, selection seconds and selection's share of the run's CPU seconds."""
    found: dict[str, dict] = defaultdict(lambda: {"tasks": set(), "seconds": [], "share": []})
    for r in rows:
        if r["sweep"] in sweeps and r.get("prepare_seconds") is not None and r.get("cpu_seconds"):
            cell = found[r["variant"]]
            cell["tasks"].add(r["task"])
            cell["seconds"].append(r["prepare_seconds"])
            cell["share"].append(r["prepare_seconds"] / r["cpu_seconds"])
    return dict(found)


def _spread(values: list[float], fmt: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return fmt.format(mid) if low == high else f"{fmt.format(mid)} ({fmt.format(low)}-{fmt.format(high)})"


def markdown(costs: dict[str, dict]) -> str:
    header = ["row", "runs", "tasks", "selection (s): median (min-max)", "share of the run's CPU time"]
    body = [
        [variant, str(len(c["seconds"])), ",".join(sorted(c["tasks"])), _spread(c["seconds"], "{:.1f}"),
         _spread([100 * s for s in c["share"]], "{:.1f}%")]
        for variant, c in costs.items()
    ]  # fmt: skip
    return render(header, body, "markdown", [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--sweep", required=True, help="comma-separated sweeps whose runs count")
    parser.add_argument("--out", help="write <out>.md")
    args = parser.parse_args()
    sweeps = args.sweep.split(",")
    costs = selection_costs(read_csv(args.csv), sweeps)
    if not costs:
        print(f"error: no run of {args.sweep} in {args.csv} recorded its selection time", file=sys.stderr)
        return 2
    text = markdown(costs)
    if args.out:
        atomic_write_text(Path(f"{args.out}.md"), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
