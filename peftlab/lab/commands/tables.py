"""Tables from the collected CSV, as <out>.md, <out>.csv and <out>.tex.

    peftlab table docs/results/runs.csv --sweep table1 --out docs/results/table1
    peftlab table docs/results/runs.csv --sweep layer_sweep_mrpc --by layer --out docs/results/layer_sweep_mrpc

Without --by, the paper's Table 1: per method row and task, mean ± std (n seeds) of the task's main metric (x100),
with the average relative improvement and gap bridged over the tasks (see peftlab/lab/results.py); --cells gap_bridged
(or relative_improvement) shows that quantity per task instead of the score. --score last shows each run's
last-epoch score instead of its reported (best-epoch, for the paper's protocol) one. With --by layer or
--by bottleneck_dim, one task of a sweep: per method row and layer (or bottleneck), mean ± std (n), the best cell
and the gap it bridges between the best probe ("raw") cell and full fine-tuning.
"""

from __future__ import annotations

import argparse
import functools

from peftlab.io import atomic_write_text
from peftlab.lab.results import (
    CELLS,
    SCORES,
    axis_table,
    format_axis_table,
    format_table,
    read_csv,
    select_score,
    select_variants,
    table1,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftlab table", description=__doc__)
    parser.add_argument("csv")
    parser.add_argument("--sweep", required=True, help="rows of this sweep only")
    parser.add_argument("--raw", default="raw,raw_cls,raw_mean", help="variants that are the probe ('raw') rows")
    parser.add_argument("--full", default="finetune", help="variant that is full fine-tuning")
    parser.add_argument("--by", choices=["layer", "bottleneck_dim"], help="one task's sweep over this axis")
    parser.add_argument("--task", help="with --by: the task (default: the sweep's only task)")
    parser.add_argument("--variants", help="comma-separated variants to show, in this order (default: all)")
    parser.add_argument(
        "--cells", choices=CELLS, default="score",
        help="Table 1's task cells: the score (default), or each row's relative improvement or gap bridged per task",
    )  # fmt: skip
    parser.add_argument(
        "--score", choices=SCORES, default="reported",
        help="reported: each run's reported score (its best epoch where it selects one on dev); last: its last "
        "epoch's score, which no selection on the dev set has flattered",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args(argv)
    rows = select_score([r for r in read_csv(args.csv) if r["sweep"] == args.sweep], args.score)
    if not rows:
        parser.error(f"no runs of sweep {args.sweep!r} in {args.csv}")
    if args.variants:
        try:
            rows = select_variants(rows, args.variants, args.sweep)
        except ValueError as err:
            parser.error(str(err))
    raw = tuple(args.raw.split(","))
    if args.by and args.cells != "score":
        parser.error(f"--cells {args.cells}: only for Table 1 (without --by)")
    if args.by:
        tasks = sorted({r["task"] for r in rows})
        if args.task is None and len(tasks) > 1:
            parser.error(f"the sweep has several tasks ({', '.join(tasks)}); pick one with --task")
        task = args.task or tasks[0]
        if task not in tasks:
            parser.error(f"--task {task}: not in sweep {args.sweep!r}; its tasks are {', '.join(tasks)}")
        table = axis_table([r for r in rows if r["task"] == task], args.by, raw, args.full)
        render = format_axis_table
    else:
        table, render = table1(rows, raw, args.full), functools.partial(format_table, cells=args.cells)

    for style, suffix in (("markdown", ".md"), ("csv", ".csv"), ("latex", ".tex")):
        atomic_write_text(args.out + suffix, render(table, style))
    print(render(table, "markdown"))
    return 0
