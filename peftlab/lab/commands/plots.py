"""Figures from the collected CSV (matplotlib); each is written as PNG, PDF and SVG beside each other (``--out``
with or without one of those extensions):

    peftlab plot docs/results/runs.csv --sweep layer_sweep_mrpc --x layer --out docs/results/layer_sweep_mrpc.png
    peftlab plot docs/results/runs.csv --sweep scaleup_mrpc --x bottleneck_dim --logx \
        --variants parallel_adapter_bn,finetune --out docs/results/bottleneck_mrpc.png

One line per variant (mean over seeds, error bars = std), the full fine-tuning variant as a dashed line (and any
variant without the x axis as a grey dashed line). A sweep none of whose runs has a value on the x axis (Table 1's)
is refused, naming the sweeps that have one.

    peftlab plot docs/results/runs.csv --sweep table1_paper --gap_bridged --out table1_paper_gap

Table 1's figure: the gap bridged (as ``peftlab table --cells gap_bridged``) per task, one bar per method row, error
bars the std over seeds scaled by the task's gap, and the average over the tasks.

    peftlab plot --auto_layer RUN_DIR --out candidates.png

draws the candidate layers of a ``--target_layers auto`` run: each one's proxy value and, for the halving, its
selection-split score by training step, where successive halving stopped it, and the layer chosen.

Variants, metrics and tasks are shown by their paper names (:mod:`peftlab.lab.labels`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from peftlab.errors import ConfigError
from peftlab.lab.commands.tables import RAW, make_table
from peftlab.lab.labels import axis_label, metric_label, task_label, variant_label
from peftlab.lab.results import SCORES, aggregate, read_csv, select_score, select_variants, sweep_rows

FORMATS = ("png", "pdf", "svg")
"""Every figure is written in each of these formats, beside each other."""

AXES = ("layer", "bottleneck_dim")
"""The axes a sweep's runs can have values on (``--x``)."""

_METADATA = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}  # no dates: the same figure, same bytes


def save_figure(fig, out: str | Path) -> list[str]:
    """``fig`` as PNG, PDF and SVG: ``out`` (its extension dropped when it is one of those) + .png, .pdf, .svg; the
    paths written. The figure is closed."""
    base = Path(out)
    if base.suffix.lower().lstrip(".") in FORMATS:
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "peftlab"}):
        for fmt in FORMATS:
            path = base.with_name(f"{base.name}.{fmt}")
            fig.savefig(path, format=fmt, metadata=_METADATA[fmt], bbox_inches="tight")
            paths.append(str(path))
    plt.close(fig)
    return paths


def require_axis(rows: list[dict[str, Any]], x: str, where: str, every: list[dict[str, Any]] = ()) -> None:
    """A :class:`ConfigError` unless some of ``rows`` (the runs of ``where``) have a value on ``x``: the message
    names the sweeps of ``every`` (all the CSV's rows) that have values on each axis."""
    if any(r.get(x) is not None for r in rows):
        return
    having: dict[str, dict[str, None]] = {axis: {} for axis in AXES}
    for row in every:
        for axis in AXES:
            if row.get(axis) is not None:
                having[axis][row["sweep"]] = None
    works = "; ".join(f"sweeps with a {axis}: {', '.join(sweeps)}" for axis, sweeps in having.items() if sweeps)
    raise ConfigError(
        f"no runs of {where} have a {x}, so a figure over {x} would show nothing; {works or 'no sweep has one'}; "
        "a sweep without layers (Table 1) is drawn by peftlab plot --gap_bridged or peftlab paper table1"
    )


def axis_figure(rows: list[dict[str, Any]], x: str, full: str, logx: bool, title: str, seeds: int = 1):
    """One line per variant over ``x`` (mean over seeds, error bars = std); ``full`` and any variant without ``x``
    as dashed lines. Rows none of which has an ``x`` are refused (:func:`require_axis`)."""
    require_axis(rows, x, "the rows given")
    stats = aggregate(rows, ("variant", x))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for variant in dict.fromkeys(v for v, _ in stats):
        points = sorted(((k[1], s) for k, s in stats.items() if k[0] == variant), key=lambda p: (p[0] is None, p[0]))
        name = variant_label(variant)
        if variant == full or all(p[0] is None for p in points):
            value = points[0][1]["mean"]
            ax.axhline(
                value, linestyle="--", color="black" if variant == full else "grey", label=f"{name} ({value:.1f})"
            )
            continue
        xs = [p[0] for p in points if p[0] is not None]
        ax.errorbar(
            xs,
            [p[1]["mean"] for p in points if p[0] is not None],
            yerr=[p[1]["std"] for p in points if p[0] is not None],
            marker="o",
            capsize=3,
            label=name,
        )
    if logx:
        ax.set_xscale("log", base=2)
    ticks = sorted({k[1] for k in stats if k[1] is not None})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(f"{metric_label(rows[0]['metric'], rows[0]['task'])} x100 (dev)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", title="error bars: std over seeds" if seeds > 1 else None, title_fontsize=7)
    fig.tight_layout()
    return fig


def plot(rows, x: str, full: str, logx: bool, title: str, out: str, seeds: int = 1) -> list[str]:
    """:func:`axis_figure`, saved by :func:`save_figure`; the paths written."""
    return save_figure(axis_figure(rows, x, full, logx, title, seeds), out)


def sweep_axis_figure(
    every: list[dict[str, Any]],
    sweep: str,
    *,
    x: str = "layer",
    score: str = "reported",
    task: str | None = None,
    variants: str | None = None,
    full: str = "finetune",
    logx: bool = False,
    where: str = "in the CSV",
):
    """:func:`axis_figure` of ``sweep``'s runs (of ``every``, read ``where``: "in runs.csv") over ``x``, on one
    task (default: the sweep's first). Bad choices, and a sweep with no values on ``x``, are a
    :class:`ConfigError`."""
    rows = select_score(sweep_rows(every, sweep, where), score)
    task = task or rows[0]["task"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    rows = [r for r in rows if r["task"] == task]
    if not rows:
        raise ConfigError(f"--task {task}: no runs of sweep {sweep!r} have that task; its tasks: {', '.join(tasks)}")
    if variants:
        rows = select_variants(rows, variants, f"{sweep}/{task}")
    require_axis(rows, x, f"sweep {sweep!r} ({task})", every)
    seeds = len({r["seed"] for r in rows})
    which = ", last epoch" if score == "last" else ""
    title = f"{task_label(task)} ({seeds} seed{'s' if seeds > 1 else ''}, dev{which})"
    return axis_figure(rows, x, full, logx, title, seeds)


def _gap(table: dict[str, Any], variant: str, task: str) -> float | None:
    """The gap bridged of ``variant`` on ``task`` in ``table`` (a fraction), or ``None`` where the task has no gap."""
    return table["derived"].get((variant, task), {}).get("gap_bridged")


def _require_gap(table: dict[str, Any]) -> None:
    """A :class:`ConfigError` unless some cell of ``table`` has a gap bridged: a figure without one would be empty."""
    tasks, variants = table["tasks"], table["variants"]
    if not any(_gap(table, v, t) is not None for v in variants for t in tasks):
        raise ConfigError(
            f"nothing to show: no task ({', '.join(tasks) or 'none'}) has a gap bridged, since on none of them is "
            f"full fine-tuning above the best probe row (rows: {', '.join(variants)})"
        )


def _gap_bars(ax, table: dict[str, Any], width: float) -> set[int]:
    """Draw on ``ax``, for each method row of ``table``, a bar per task of its gap bridged (x100), error bars of the
    std over seeds divided by the task's gap where a cell has several seeds, and a hatched bar of its average over
    the tasks after them; returns the numbers of seeds of the cells drawn (for the caption)."""
    tasks, variants, stats, references = table["tasks"], table["variants"], table["stats"], table["references"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    counts = set()
    for i, variant in enumerate(variants):
        xs, heights, errors = [], [], []
        for g, task in enumerate(tasks):
            value = _gap(table, variant, task)
            if value is None:
                continue
            reference = references[task]
            cell = stats[(variant, task)]
            counts.add(cell["n"])
            xs.append(g + (i - (len(variants) - 1) / 2) * width)
            heights.append(100 * value)
            errors.append(100 * cell["std"] / (reference["full"] - reference["best_raw"]) if cell["n"] > 1 else None)
        defined = [_gap(table, variant, t) for t in tasks if _gap(table, variant, t) is not None]
        colour = colours[i % len(colours)]
        ax.bar(xs, heights, width, color=colour, label=variant_label(variant))
        spread = [(x, h, e) for x, h, e in zip(xs, heights, errors) if e is not None]
        if spread:
            ax.errorbar(*zip(*spread), fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        if defined:
            ax.bar(len(tasks) + (i - (len(variants) - 1) / 2) * width, 100 * statistics.fmean(defined), width,
                   color=colour, hatch="//", edgecolor="white")  # fmt: skip
    return counts


def _gap_caption(counts: set[int], notes: dict[str, str]) -> list[str]:
    """The lines under Table 1's figure: what the gap bridged and the error bars are, the seeds per cell (``counts``),
    and the tasks trained under an offline protocol (``notes``, marked † on the axis)."""
    seeds = "–".join(map(str, sorted({min(counts), max(counts)}))) if counts else "0"
    caption = [
        "Gap bridged = (row − best probe) / (full fine-tuning − best probe), per task on the means over seeds: "
        "0% is the best probe row, 100% (dashed) full fine-tuning.",
        f"Error bars: ± 1 std over seeds ({seeds} per cell) of the row's score, divided by the task's gap; none where "
        "a cell has one seed. Average (hatched): the mean over the tasks with a gap.",
    ]
    if notes:
        caption.append("† trained under an offline protocol: " + "; ".join(f"{t}: {n}" for t, n in notes.items()))
    return caption


def gap_figure(table: dict[str, Any], title: str):
    """Table 1's figure from :func:`peftlab.lab.results.table1`'s ``table``: per task, one bar per method row of its
    gap bridged, with error bars of the std over seeds of the row's score divided by the task's gap (where a cell
    has several seeds), then the average over the tasks (as the table's last column). A task whose full fine-tuning
    does not beat its best probe has no gap, and says so; a table with no gap at all is a :class:`ConfigError`."""
    tasks, variants, notes = table["tasks"], table["variants"], table.get("notes", {})
    _require_gap(table)
    groups = [*tasks, "average"]
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 1.5), 4.5), dpi=110)
    counts = _gap_bars(ax, table, width)
    for g, task in enumerate(tasks):
        if all(_gap(table, v, task) is None for v in variants):
            ax.text(g, 50, "no gap:\nfull fine-tuning\nnot above\nthe probe", ha="center", va="center", fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)), [task_label(t) + ("†" if t in notes else "") for t in tasks] + ["average"])
    ax.set_ylabel("gap bridged (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="method", title_fontsize=8)
    caption = _gap_caption(counts, notes)
    fig.tight_layout()
    fig.text(0.0, -0.02, "\n".join(caption), fontsize=7, ha="left", va="top", wrap=True)
    return fig


def sweep_gap_figure(
    every: list[dict[str, Any]],
    sweep: str,
    *,
    score: str = "reported",
    variants: str | None = None,
    raw: tuple[str, ...] = RAW,
    full: str = "finetune",
    where: str = "in the CSV",
):
    """:func:`gap_figure` of ``sweep``'s Table 1: the table ``peftlab table`` makes of the same choices (of
    ``every``, read ``where``: "in runs.csv")."""
    table, _ = make_table(every, sweep, score=score, variants=variants, raw=raw, full=full, where=where)
    which = ", last epoch" if score == "last" else ""
    return gap_figure(table, f"Gap bridged per task (dev{which})")


def auto_layer_figure(record: dict):
    """The figure of a ``--target_layers auto`` record (``all_results.json``'s ``auto_layer``): the gradient-norm
    proxy of every candidate layer (bars, the chosen layer dark); and, where candidates trained (the halving), each
    layer's selection-split score against the steps it trained (a cross where the halving stopped it, the chosen
    layer in bold), with the probe's score where the candidates started from its head (``--auto_warm_head``); the
    title gives the choice's margin over the runner-up with its bootstrap interval."""
    curves = any(c["evaluations"] for c in record["candidates"].values())
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(10 if curves else 5, 4), dpi=110, squeeze=False)
    layers = sorted(record["candidates"], key=int)
    bars = axes[0][0]
    bars.bar([f"L{layer}" for layer in layers], [record["candidates"][layer]["proxy_gradient_norm"] for layer in layers],
             color=["tab:blue" if int(layer) == record["chosen_layer"] else "lightsteelblue" for layer in layers])  # fmt: skip
    bars.set_ylabel("proxy: gradient norm at the start")
    bars.set_title(f"proxy's choice L{record['proxy_choice']}" + (" (beside the probe's head)" if "warm_head" in record
                   else ""), fontsize=9)  # fmt: skip
    if curves:
        ax = axes[0][1]
        for layer in layers:
            candidate = record["candidates"][layer]
            points = [(e["step"], 100 * e[record["metric"]]) for e in candidate["evaluations"]]
            if not points:
                continue
            chosen = int(layer) == record["chosen_layer"]
            line = ax.plot(*zip(*points), marker="o", markersize=3, linewidth=2.5 if chosen else 1,
                           label=f"L{layer} ({candidate['state']}{', chosen' if chosen else ''})")  # fmt: skip
            if candidate["state"] == "pruned":
                ax.plot(*points[-1], marker="x", markersize=9, color=line[0].get_color())
        if record.get("warm_head", {}).get(record["metric"]) is not None:
            ax.axhline(100 * record["warm_head"][record["metric"]], color="grey", linestyle="--", linewidth=1,
                       label="the probe the candidates start from")  # fmt: skip
        ax.set_xlabel("training steps")
        ax.set_ylabel(f"{record['metric']} on the selection split (x100)")
        ax.legend(fontsize=7)
    close, note = record.get("margin") or {}, ""
    if "interval_90" in close:  # how far ahead of the runner-up, and whether the selection split told them apart
        low, high = (100 * v for v in close["interval_90"])
        note = (f" over L{close['runner_up']} by {100 * close['difference']:+.1f} (90 % interval {low:+.1f} to "
                f"{high:+.1f}{'' if close['separable'] else ': not told apart'})")  # fmt: skip
    fig.suptitle(f"auto layer: {record['strategy']}, chose L{record['chosen_layer']}{note}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_auto_layer(run_dir: str, out: str) -> list[str]:
    """:func:`auto_layer_figure` of the run in ``run_dir``, saved to ``out`` (:func:`save_figure`)."""
    import json

    record = json.loads((Path(run_dir) / "all_results.json").read_text())["auto_layer"]
    return save_figure(auto_layer_figure(record), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="peftlab plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if "--auto_layer" in (sys.argv[1:] if argv is None else argv):  # peftlab plot --auto_layer RUN_DIR --out FILE.png
        parser.add_argument("--auto_layer", required=True, help="a --target_layers auto run's folder")
        parser.add_argument("--out", required=True)
        args = parser.parse_args(argv)
        paths = plot_auto_layer(args.auto_layer, args.out)
        print(f"{args.auto_layer} -> {', '.join(paths)}")
        return 0
    parser.add_argument("csv")
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--task", default=None, help="rows of this task only (default: the sweep's first task)")
    parser.add_argument("--x", default="layer", choices=AXES)
    parser.add_argument("--logx", action="store_true")
    parser.add_argument(
        "--gap_bridged", action="store_true",
        help="Table 1's figure instead: gap bridged per task and method row (--x, --logx and --task do not apply)",
    )  # fmt: skip
    parser.add_argument("--raw", default=",".join(RAW), help="with --gap_bridged: the probe ('raw') variants")
    parser.add_argument("--full", default="finetune")
    parser.add_argument("--variants", help="comma-separated variants to draw, in legend order (default: all)")
    parser.add_argument("--score", choices=SCORES, default="reported", help="reported (best epoch) or last epoch")
    parser.add_argument("--out", required=True, help="the figure's path (.png, .pdf and .svg are written)")
    args = parser.parse_args(argv)
    every = read_csv(args.csv)
    if args.gap_bridged:
        fig = sweep_gap_figure(every, args.sweep, score=args.score, variants=args.variants,
                               raw=tuple(args.raw.split(",")), full=args.full, where=f"in {args.csv}")  # fmt: skip
    else:
        fig = sweep_axis_figure(every, args.sweep, x=args.x, score=args.score, task=args.task, variants=args.variants,
                                full=args.full, logx=args.logx, where=f"in {args.csv}")  # fmt: skip
    paths = save_figure(fig, args.out)
    print(f"{args.sweep} -> {', '.join(paths)}")
    return 0
