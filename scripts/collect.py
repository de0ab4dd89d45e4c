#!/usr/bin/env python
"""Collect every sweep run's results into one CSV: python scripts/collect.py runs/sweeps --out docs/results/runs.csv"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.results import collect, write_csv  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("roots", nargs="+", help="folders searched for runs (all_results.json + sweep_point.json)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    args = parser.parse_args()
    rows = collect(args.roots)
    write_csv(rows, args.out)
    print(f"{len(rows)} runs -> {args.out}")
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        mine = [r for r in rows if r["sweep"] == sweep]
        reused = sum(bool(r["reused_from"]) for r in mine)
        seconds = sum(r["wall_seconds"] or 0 for r in mine)
        print(
            f"  {sweep}: {len(mine)} runs ({reused} reused from identical runs), {seconds / 3600:.2f} h of run wall time"
        )
