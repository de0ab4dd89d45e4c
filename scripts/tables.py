#!/usr/bin/env python
"""Table 1 from the collected CSV: python scripts/tables.py docs/results/runs.csv --sweep table1 --out docs/results/table1

Writes <out>.md, <out>.csv and <out>.tex: per method row and task, mean ± std (n seeds) of the task's main metric
(x100), with the average relative improvement and gap bridged over the tasks (see peftlab/results.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.io import atomic_write_text  # noqa: E402
from peftlab.results import format_table, read_csv, table1  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv")
    parser.add_argument("--sweep", required=True, help="rows of this sweep only")
    parser.add_argument("--raw", default="raw_cls,raw_mean", help="variants that are the probe ('raw') rows")
    parser.add_argument("--full", default="finetune", help="variant that is full fine-tuning")
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args()
    rows = [r for r in read_csv(args.csv) if r["sweep"] == args.sweep]
    table = table1(rows, tuple(args.raw.split(",")), args.full)
    for style, suffix in (("markdown", ".md"), ("csv", ".csv"), ("latex", ".tex")):
        atomic_write_text(args.out + suffix, format_table(table, style))
    print(format_table(table, "markdown"))
