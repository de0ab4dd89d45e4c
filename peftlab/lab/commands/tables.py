"""Tables from the collected CSV, as <out>.md, <out>.csv and <out>.tex.

    peftlab table docs/results/runs.csv --sweep table1 --out docs/results/table1
    peftlab table docs/results/runs.csv --sweep layer_sweep_mrpc --by layer --out docs/results/layer_sweep_mrpc

Without --by, the paper's Table 1: per method row and task, mean ± std (n seeds) of the task's main metric (x100),
with the average relative improvement and gap bridged over the tasks (see peftlab/lab/results.py); --cells gap_bridged
(or relative_improvement) shows that quantity per task instead of the score. --score last shows each run's
last-epoch score instead of its reported (best-epoch, for the paper's protocol) one. With --by layer or
--by bottleneck_dim, one task of a sweep: per method row and layer (or bottleneck), mean ± std (n), the best cell
and the gap it bridges between the best probe ("raw") cell and full fine-tuning. --sweep a,b makes one table of
several sweeps' runs.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from peftlab.errors import ConfigError
from peftlab.io import atomic_write_text
from peftlab.lab.results import (
    CELLS,
    SCORES,
    axis_table,
    format_axis_table,
    format_table,
    read_csv,
    select_score,
    select_values,
    select_variants,
    sweep_rows,
    table1,
)

RAW = ("raw", "raw_cls", "raw_mean")
"""The variants that are the probe ("raw") rows, by default."""

STYLES = (("markdown", ".md"), ("csv", ".csv"), ("latex", ".tex"))


def make_table(
    rows: list[dict[str, Any]],
    sweep: str,
    *,
    score: str = "reported",
    by: str | None = None,
    task: str | None = None,
    variants: str | None = None,
    tasks: str | None = None,
    cells: str = "score",
    raw: tuple[str, ...] = RAW,
    full: str = "finetune",
    where: str = "in the CSV",
):
    """The table of ``sweep``'s rows (of all ``rows``, read ``where``: "in runs.csv") and its
    ``render(table, style)``: Table 1 (of the comma-separated ``tasks`` only, if given: averages over the tasks
    another table has), or with ``by`` one task's table over that axis. A bad choice is a :class:`ConfigError`."""
    rows = select_score(sweep_rows(rows, sweep, where), score)
    if variants:
        rows = select_variants(rows, variants, sweep)
    if tasks:
        if by:
            raise ConfigError(f"--tasks {tasks}: only for Table 1 (with --by, --task picks the one task)")
        rows = select_values(rows, "task", tasks, sweep)
    if by and cells != "score":
        raise ConfigError(f"--cells {cells}: only for Table 1 (without --by)")
    if not by:
        return table1(rows, raw, full), functools.partial(format_table, cells=cells)
    tasks = sorted({r["task"] for r in rows})
    if task is None and len(tasks) > 1:
        raise ConfigError(f"the sweep has several tasks ({', '.join(tasks)}); pick one with --task")
    task = task or tasks[0]
    if task not in tasks:
        raise ConfigError(f"--task {task}: not in sweep {sweep!r}; its tasks are {', '.join(tasks)}")
    return axis_table([r for r in rows if r["task"] == task], by, raw, full), format_axis_table


def write_table(table: dict[str, Any], render, out: str) -> list[str]:
    """``render``'s Markdown, CSV and LaTeX of ``table`` as ``out``.md, .csv and .tex; the paths written."""
    paths = []
    for style, suffix in STYLES:
        atomic_write_text(out + suffix, render(table, style))
        paths.append(out + suffix)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftlab table", description=__doc__)
    parser.add_argument("csv")
    parser.add_argument(
        "--sweep", required=True,
        help="rows of this sweep only, or of a comma-separated list of sweeps (one experiment run under two sweep "
        "files, e.g. two precisions): a run that several hold is taken from the first listed, and a footer names "
        "the cells of each",
    )  # fmt: skip
    parser.add_argument("--raw", default=",".join(RAW), help="variants that are the probe ('raw') rows")
    parser.add_argument("--full", default="finetune", help="variant that is full fine-tuning")
    parser.add_argument("--by", choices=["layer", "bottleneck_dim"], help="one task's sweep over this axis")
    parser.add_argument("--task", help="with --by: the task (default: the sweep's only task)")
    parser.add_argument("--variants", help="comma-separated variants to show, in this order (default: all)")
    parser.add_argument(
        "--tasks", help="Table 1 of these comma-separated tasks only (default: all), e.g. another table's tasks"
    )
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
    table, render = make_table(
        read_csv(args.csv), args.sweep, score=args.score, by=args.by, task=args.task, variants=args.variants,
        tasks=args.tasks, cells=args.cells, raw=tuple(args.raw.split(",")), full=args.full, where=f"in {args.csv}",
    )  # fmt: skip
    write_table(table, render, args.out)
    print(render(table, "markdown"))
    return 0
