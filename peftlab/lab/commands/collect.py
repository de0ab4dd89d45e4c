"""Collect every sweep run's results into one CSV:

    peftlab collect docs/results/runs runs/sweeps --keep docs/results/runs.csv --out docs/results/runs.csv

--keep CSV keeps the rows of an earlier CSV whose sweep has no run folder under the roots (sweeps whose run folders
are not kept, such as the quick-protocol sweeps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from peftlab.lab.results import collect, read_csv, write_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftlab collect", description=__doc__)
    parser.add_argument("roots", nargs="+", help="folders searched for runs (all_results.json + sweep_point.json)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--keep", help="an earlier CSV: its rows of sweeps not found under the roots are kept")
    args = parser.parse_args(argv)
    rows = collect([root for root in args.roots if Path(root).is_dir()])
    if args.keep and Path(args.keep).is_file():
        found = {r["sweep"] for r in rows}
        kept = [r for r in read_csv(args.keep) if r["sweep"] not in found]
        rows = kept + rows
        if kept:
            print(f"kept {len(kept)} rows of {', '.join(dict.fromkeys(r['sweep'] for r in kept))} from {args.keep}")
    write_csv(rows, args.out)
    print(f"{len(rows)} runs -> {args.out}")
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        mine = [r for r in rows if r["sweep"] == sweep]
        reused = sum(bool(r["reused_from"]) for r in mine)
        seconds = sum(r["wall_seconds"] or 0 for r in mine)
        print(
            f"  {sweep}: {len(mine)} runs ({reused} reused from identical runs), {seconds / 3600:.2f} h of run wall time"
        )
    return 0
