#!/usr/bin/env python
"""Whether two sweeps of the same grid in two precisions give equal scores: per task and row, the difference of the
means against the reference sweep's seed std, and run by run (the same task, row and seed).

    python scripts/compare_precision.py docs/results/runs.csv --reference table1_paper --other table1_paper_bf16 \
        --tasks mrpc,stsb,rte [--score reported|last] [--out docs/results/precision_bf16]

A cell is "equal" when |mean(other) - mean(reference)| is within one reference seed std, or within 0.5 points where
that std is smaller; the verdict counts the cells and names the ones that fail. Only seeds present in both sweeps
are compared.

The verdict also gives the number of cells expected to fail by chance alone if the other sweep's runs were as
independent of the reference's as runs of other seeds are (another random stream: --fast_dropout's masks, say): per
cell, the share of simulated pairs of n-seed samples, both normal with the reference's seed std, that fail the same
rule (its std and the floor included), summed over the cells. A precision that changes nothing but rounding fails
far fewer cells than that; one that only changes the random stream, about as many.

The cost table pairs the runs (same task, row and seed) and divides the reference's CPU time per epoch by the
other's (the CSV's ``cpu_seconds`` and ``epochs_run`` of each run): per row the median, and the
total of the paired runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from peftlab.io import atomic_write_text
from peftlab.lab.results import read_csv, select_score

FLOOR = 0.5
"""Points: the tolerance where the reference's seed std is smaller."""


def scores(rows, sweep: str, tasks: list[str]) -> dict[tuple[str, str, int], float]:
    return {
        (r["task"], r["variant"], int(r["seed"])): 100 * r["score"]
        for r in rows
        if r["sweep"] == sweep and r["task"] in tasks and r.get("score") is not None
    }


def cpu_per_epoch(rows, sweep: str, tasks: list[str]) -> dict[tuple[str, str, int], float]:
    """CPU seconds per epoch run of each run of ``sweep`` that recorded its CPU time, by (task, row, seed)."""
    out = {}
    for r in rows:
        if r["sweep"] != sweep or r["task"] not in tasks or not r.get("epochs_run"):
            continue
        if r.get("cpu_seconds"):
            out[(r["task"], r["variant"], int(r["seed"]))] = r["cpu_seconds"] / r["epochs_run"]
    return out


def chance_failures(cells: list[dict], draws: int = 20000) -> float:
    """Cells expected to fail if the other sweep's runs were independent draws (see the module's docstring)."""
    rng = np.random.default_rng(0)
    expected = 0.0
    for c in cells:
        n = len(c["seeds"])
        if c["std"] == 0 or n < 2:
            continue
        ref, oth = rng.normal(0, c["std"], (2, draws, n))
        tolerance = np.maximum(ref.std(axis=1, ddof=1), FLOOR)
        expected += float(np.mean(np.abs(oth.mean(axis=1) - ref.mean(axis=1)) > tolerance))
    return expected


def cost_markdown(reference: dict, other: dict) -> str:
    paired = sorted(set(reference) & set(other))
    if not paired:
        return ""
    rows: dict[str, list[tuple[float, float]]] = {}
    for key in paired:
        rows.setdefault(key[1], []).append((reference[key], other[key]))
    lines = ["", "CPU time per epoch, paired runs (reference / other):", "", "| row | runs | median ratio |", "| --- | ---: | ---: |"]  # fmt: skip
    for variant, pairs in sorted(rows.items()):
        lines.append(f"| {variant} | {len(pairs)} | {statistics.median(a / b for a, b in pairs):.2f}x |")
    total = [sum(reference[k] for k in paired), sum(other[k] for k in paired)]
    lines += ["", f"All {len(paired)} paired runs: {total[0] / total[1]:.2f}x (sum of the reference's CPU time per epoch over the other's)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def compare(reference: dict, other: dict) -> list[dict]:
    cells = sorted({(t, v) for t, v, _ in reference} & {(t, v) for t, v, _ in other})
    out = []
    for task, variant in cells:
        seeds = sorted(s for t, v, s in reference if (t, v) == (task, variant) and (t, v, s) in other)
        if not seeds:
            continue
        ref = [reference[(task, variant, s)] for s in seeds]
        oth = [other[(task, variant, s)] for s in seeds]
        std = statistics.stdev(ref) if len(ref) > 1 else 0.0
        diff = statistics.fmean(oth) - statistics.fmean(ref)
        runs = [b - a for a, b in zip(ref, oth)]
        out.append({
            "task": task, "variant": variant, "seeds": seeds, "reference": statistics.fmean(ref),
            "other": statistics.fmean(oth), "diff": diff, "std": std, "tolerance": max(std, FLOOR),
            "equal": abs(diff) <= max(std, FLOOR), "largest_run_diff": max(runs, key=abs),
        })  # fmt: skip
    return out


def markdown(cells: list[dict], reference: str, other: str, score: str) -> str:
    lines = [
        f"{other} against {reference} ({score} score, x100; seeds present in both):",
        "",
        "| task | row | seeds | reference | other | difference | ref. seed std | tolerance | equal | largest run difference |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for c in cells:
        lines.append(
            f"| {c['task']} | {c['variant']} | {','.join(map(str, c['seeds']))} | {c['reference']:.1f} | "
            f"{c['other']:.1f} | {c['diff']:+.2f} | {c['std']:.2f} | {c['tolerance']:.2f} | "
            f"{'yes' if c['equal'] else '**no**'} | {c['largest_run_diff']:+.2f} |"
        )
    failed = [f"{c['task']} {c['variant']} ({c['diff']:+.2f} against {c['tolerance']:.2f})" for c in cells if not c["equal"]]  # fmt: skip
    lines += ["", f"Equal in {len(cells) - len(failed)} of {len(cells)} cells" + (f"; not in: {'; '.join(failed)}." if failed else ".")]  # fmt: skip
    lines.append(f"Runs as independent as other seeds' would fail {chance_failures(cells):.1f} cells by chance.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--reference", required=True, help="the sweep in the reference precision (float32)")
    parser.add_argument("--other", required=True, help="the same grid in the other precision")
    parser.add_argument("--tasks", required=True, help="comma-separated tasks to compare")
    parser.add_argument("--score", default="reported", choices=["reported", "last"])
    parser.add_argument("--out", help="write <out>.md")
    parser.add_argument("--cost", action="store_true", help="add the paired runs' CPU time ratios")
    parser.add_argument(
        "--cost_only", action="store_true",
        help="only the CPU time table (two sweeps of one grid that differ in more than precision: another model)",
    )  # fmt: skip
    args = parser.parse_args()
    rows = select_score(read_csv(args.csv), args.score)
    tasks = args.tasks.split(",")
    cost = ""
    if args.cost or args.cost_only:
        cost = cost_markdown(cpu_per_epoch(rows, args.reference, tasks), cpu_per_epoch(rows, args.other, tasks))
    if args.cost_only:
        if not cost:
            print(f"error: no run of {args.other} has a run of {args.reference} beside it", file=sys.stderr)
            return 2
        text = f"{args.other} against {args.reference}:\n{cost}"
    else:
        cells = compare(scores(rows, args.reference, tasks), scores(rows, args.other, tasks))
        if not cells:
            print(f"error: no task and row of {args.other} has runs in {args.reference} too", file=sys.stderr)
            return 2
        text = markdown(cells, args.reference, args.other, args.score) + cost
    if args.out:
        atomic_write_text(Path(f"{args.out}.md"), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
