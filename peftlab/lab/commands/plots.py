"""Figures from the collected CSV (matplotlib, PNG):

    peftlab plot docs/results/runs.csv --sweep layer_sweep_mrpc --x layer --out docs/results/layer_sweep_mrpc.png
    peftlab plot docs/results/runs.csv --sweep scaleup_mrpc --x bottleneck_dim --logx \
        --variants parallel_adapter_bn,finetune --out docs/results/bottleneck_mrpc.png

One line per variant (mean over seeds, error bars = std), the full fine-tuning variant as a dashed line (and any
variant without the x axis as a grey dashed line).

    peftlab plot --auto_layer RUN_DIR --out candidates.png

draws the candidate layers of a ``--target_layers auto`` run: each one's proxy value and, for the halving, its
selection-split score by training step, where successive halving stopped it, and the layer chosen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from peftlab.lab.results import SCORES, aggregate, read_csv, select_score, select_variants


def plot(rows, x: str, full: str, logx: bool, title: str, out: str) -> None:
    stats = aggregate(rows, ("variant", x))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for variant in dict.fromkeys(v for v, _ in stats):
        points = sorted((k[1], s) for k, s in stats.items() if k[0] == variant)
        if variant == full or all(p[0] is None for p in points):
            value = points[0][1]["mean"]
            ax.axhline(
                value, linestyle="--", color="black" if variant == full else "grey", label=f"{variant} ({value:.1f})"
            )
            continue
        xs = [p[0] for p in points if p[0] is not None]
        ax.errorbar(
            xs,
            [p[1]["mean"] for p in points if p[0] is not None],
            yerr=[p[1]["std"] for p in points if p[0] is not None],
            marker="o",
            capsize=3,
            label=variant,
        )
    if logx:
        ax.set_xscale("log", base=2)
    ticks = sorted({k[1] for k in stats if k[1] is not None})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(f"{rows[0]['metric']} x100 (dev)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


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


def plot_auto_layer(run_dir: str, out: str) -> None:
    """:func:`auto_layer_figure` of the run in ``run_dir``, saved to ``out``."""
    import json

    record = json.loads((Path(run_dir) / "all_results.json").read_text())["auto_layer"]
    auto_layer_figure(record).savefig(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="peftlab plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if "--auto_layer" in (sys.argv[1:] if argv is None else argv):  # peftlab plot --auto_layer RUN_DIR --out FILE.png
        parser.add_argument("--auto_layer", required=True, help="a --target_layers auto run's folder")
        parser.add_argument("--out", required=True)
        args = parser.parse_args(argv)
        plot_auto_layer(args.auto_layer, args.out)
        print(f"{args.auto_layer} -> {args.out}")
        return 0
    parser.add_argument("csv")
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--task", default=None, help="rows of this task only (default: the sweep's first task)")
    parser.add_argument("--x", default="layer", choices=["layer", "bottleneck_dim"])
    parser.add_argument("--logx", action="store_true")
    parser.add_argument("--full", default="finetune")
    parser.add_argument("--variants", help="comma-separated variants to draw, in legend order (default: all)")
    parser.add_argument("--score", choices=SCORES, default="reported", help="reported (best epoch) or last epoch")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows = select_score([r for r in read_csv(args.csv) if r["sweep"] == args.sweep], args.score)
    if not rows:
        parser.error(f"no runs of sweep {args.sweep!r} in {args.csv}")
    task = args.task or rows[0]["task"]
    rows = [r for r in rows if r["task"] == task]
    if not rows:
        parser.error(f"--task {task}: no runs of sweep {args.sweep!r} have that task")
    if args.variants:
        try:
            rows = select_variants(rows, args.variants, f"{args.sweep}/{task}")
        except ValueError as err:
            parser.error(str(err))
    seeds = len({r["seed"] for r in rows})
    which = ", last epoch" if args.score == "last" else ""
    title = f"{args.sweep} ({task}, {seeds} seed{'s' if seeds > 1 else ''}, dev{which})"
    plot(rows, args.x, args.full, args.logx, title, args.out)
    print(f"{len(rows)} runs -> {args.out}")
    return 0
