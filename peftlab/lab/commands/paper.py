"""One paper artefact in one command: collect a sweep root, write its tables and figures into a folder.

    peftlab paper table1 docs/results/runs --sweep table1_paper --out paper/
    peftlab paper layer_sweep docs/results/runs --sweep layer_sweep_mrpc_paper --out paper/
    peftlab paper scaleup docs/results/runs --sweep scaleup_mrpc_paper --out paper/

Each collects the runs under the roots into OUT/runs.csv (as ``peftlab collect``), then writes, for the reported
(best-epoch) score and the last epoch's (``_last``), the tables and figures ``scripts/results.sh`` makes of that
sweep for docs/results/ (the same ``peftlab table`` and ``peftlab plot`` functions, the same rows and names):

    table1       SWEEP[_last].{md,csv,tex}: Table 1; SWEEP[_last]_gap.{md,csv,tex}: its gap bridged per task;
                 SWEEP[_last]_gap.{png,pdf,svg}: the gap bridged per task and method row (grouped bars)
    layer_sweep  SWEEP[_last].{md,csv,tex,png,pdf,svg}: the table and figure over the layers
    scaleup      bottleneck (scaleup in SWEEP's name replaced by bottleneck)[_last].{...}: over the bottleneck;
                 strategies (likewise)[_last].{...}: the strategies over the layers

and prints the paths written. The rows are the paper's (the artefact's default, below); --variants draws others,
as a comma-separated list (scaleup: PART=LIST, PART bottleneck or strategies). A sweep the roots lack, a row the
sweep lacks, or a figure with nothing to show is a one-line error naming what is missing and what is there; nothing
but the CSV is written then.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError
from peftlab.lab.commands.plots import require_axis, save_figure, sweep_axis_figure, sweep_gap_figure
from peftlab.lab.commands.tables import make_table, write_table
from peftlab.lab.results import SCORES, collect, read_csv, sweep_rows, write_csv


@dataclass(frozen=True)
class Part:
    """One table (and its figure) of an artefact."""

    name: str
    variants: tuple[str, ...]
    """The paper's rows, in order (``scripts/results.sh``'s lists)."""
    by: str | None = None
    """None: Table 1; else the axis of a one-task table and figure."""
    logx: bool = False
    prefix: str | None = None
    """Output names: ``scaleup`` in the sweep's name replaced by this (else the sweep's name itself)."""

    def stem(self, sweep: str) -> str:
        if self.prefix is None:
            return sweep
        return sweep.replace("scaleup", self.prefix, 1) if "scaleup" in sweep else f"{self.prefix}_{sweep}"


TABLE1 = ("raw_cls", "raw_mean", "prefix", "lora", "bitfit", "adapter", "parallel_adapter", "finetune")
LAYER = ("adapter_ffn", "adapter_attn", "prefix", "lora", "bitfit", "ffn_finetune", "raw", "finetune")
BN = ("parallel_adapter_bn", "raw", "finetune")
STRATEGIES = ("adapter_1_layer", "adapter_2_layers", "adapter_plus_lora", "lora_all", "raw", "finetune")

ARTEFACTS: dict[str, tuple[str, tuple[Part, ...]]] = {
    "table1": ("table1_paper", (Part("rows", TABLE1),)),
    "layer_sweep": ("layer_sweep_mrpc_paper", (Part("rows", LAYER, by="layer"),)),
    "scaleup": (
        "scaleup_mrpc_paper",
        (
            Part("bottleneck", BN, by="bottleneck_dim", logx=True, prefix="bottleneck"),
            Part("strategies", STRATEGIES, by="layer", prefix="strategies"),
        ),
    ),
}
"""Artefact: (its default sweep, its parts)."""


def chosen_variants(parts: tuple[Part, ...], given: list[str], artefact: str) -> dict[str, tuple[str, ...]]:
    """Each part's rows: the paper's, or those ``--variants`` gives (``LIST``, or ``PART=LIST``)."""
    chosen = {part.name: part.variants for part in parts}
    for value in given:
        name, _, names = value.rpartition("=")
        if not name and len(parts) > 1:
            raise ConfigError(
                f"--variants {value}: {artefact} has several figures ({', '.join(chosen)}); say which, as "
                f"--variants {parts[0].name}={value}"
            )
        name = name or parts[0].name
        if name not in chosen:
            raise ConfigError(f"--variants {value}: {artefact} has no part {name!r}; its parts: {', '.join(chosen)}")
        chosen[name] = tuple(v for v in names.split(",") if v)
    return chosen


def build(
    artefact: str,
    every: list[dict[str, Any]],
    sweep: str,
    variants: dict[str, tuple[str, ...]],
    where: str,
    task: str | None = None,
) -> list[tuple[str, Any, Any]]:
    """Everything the artefact writes, made before anything is written: (path without extension, table, render)
    for a table, (path without extension, figure, None) for a figure. Bad choices are a :class:`ConfigError`."""
    rows = sweep_rows(every, sweep, where)
    have = list(dict.fromkeys(r["variant"] for r in rows))
    outputs = []
    for part in ARTEFACTS[artefact][1]:
        wanted = variants[part.name]
        missing = [v for v in wanted if v not in have]
        if missing:
            raise ConfigError(
                f"sweep {sweep!r} {where} has no runs of {', '.join(missing)} ({artefact}'s {part.name}: "
                f"{','.join(wanted)}); its variants: {','.join(have)}"
            )
        names = ",".join(wanted)
        if part.by is not None:
            require_axis([r for r in rows if r["variant"] in wanted], part.by, f"sweep {sweep!r} {where}", every)
        for score in SCORES:
            stem = part.stem(sweep) + ("_last" if score == "last" else "")
            if part.by is None:
                for cells, suffix in (("score", ""), ("gap_bridged", "_gap")):
                    table, render = make_table(every, sweep, score=score, variants=names, cells=cells, where=where)
                    outputs.append((stem + suffix, table, render))
                figure = sweep_gap_figure(every, sweep, score=score, variants=names, where=where)
                outputs.append((stem + "_gap", figure, None))
            else:
                table, render = make_table(every, sweep, score=score, by=part.by, task=task, variants=names,
                                           where=where)  # fmt: skip
                outputs.append((stem, table, render))
                figure = sweep_axis_figure(every, sweep, x=part.by, score=score, task=task, variants=names,
                                           logx=part.logx, where=where)  # fmt: skip
                outputs.append((stem, figure, None))
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="peftlab paper", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artefact", choices=ARTEFACTS, help="the paper artefact")
    parser.add_argument("roots", nargs="+", help="sweep roots searched for runs (all_results.json + sweep_point.json)")
    parser.add_argument("--sweep", help="the sweep drawn (default: the artefact's paper-protocol sweep)")
    parser.add_argument("--out", required=True, help="folder the CSV, tables and figures are written into")
    parser.add_argument("--task", help="layer_sweep, scaleup: the task (default: the sweep's only one)")
    parser.add_argument(
        "--variants", action="append", default=[], metavar="[PART=]LIST",
        help="comma-separated rows to show instead of the paper's (scaleup: bottleneck=LIST, strategies=LIST)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    sweep, parts = ARTEFACTS[args.artefact]
    sweep = args.sweep or sweep
    variants = chosen_variants(parts, args.variants, args.artefact)
    absent = [root for root in args.roots if not Path(root).is_dir()]
    if absent:
        raise ConfigError(f"no such folder: {', '.join(absent)}")
    where = f"under {', '.join(args.roots)}"
    rows = collect(args.roots)
    sweep_rows(rows, sweep, where)  # before anything is written
    out = Path(args.out)
    csv = out / "runs.csv"
    write_csv(rows, csv)
    written = [str(csv)]
    for stem, made, render in build(args.artefact, read_csv(csv), sweep, variants, where, args.task):
        if render is None:
            written += save_figure(made, out / stem)
        else:
            written += write_table(made, render, str(out / stem))
    print(f"{args.artefact} ({sweep}, {sum(r['sweep'] == sweep for r in rows)} runs): {len(written)} files")
    for path in written:
        print(f"  {path}")
    return 0
