"""Collecting run results into one table, and the paper's Table 1 arithmetic.

"relative improvement" = (method - best raw) / best raw, and "gap bridged" = (method - best raw) /
(full fine-tuning - best raw), per task, where "best raw" is the better of the probe rows (``cls`` and ``mean``
pooling) and every score is the task's main metric averaged over seeds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError
from peftlab.glue.tasks import TASKS
from peftlab.io import atomic_write_text

COLUMNS = [
    "sweep", "task", "variant", "layer", "bottleneck_dim", "seed", "method", "pooling", "metric", "score",
    "last_score", "selection", "best_epoch", "epochs_run", "protocol",
    "trainable_params", "method_params", "head_params", "train_split", "eval_split", "wall_seconds", "cpu_seconds",
    "prepare_seconds", "output_dir", "reused_from",
]  # fmt: skip
"""``score`` is the reported model's (the best evaluation's when the run selects one, else the last step's);
``last_score`` the last epoch's evaluation (equal to ``score`` for a run without per-epoch evaluation).
``cpu_seconds`` is the run's CPU time over every start (all threads), ``prepare_seconds`` the part of its wall time
spent before training choosing what trains (a sparse mask's selection: Fisher's batches, LT-SFT's dense phase); the
three times are empty for a run whose results were copied from an identical one."""


def main_metric(task: str) -> str:
    return TASKS[task].main_metric


def collect(roots: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """One row per finished sweep run found under ``roots`` (runs without ``sweep_point.json`` are skipped)."""
    rows = []
    for root in roots:
        for results_path in sorted(Path(root).rglob("all_results.json")):
            folder = results_path.parent
            if not (folder / "sweep_point.json").is_file():
                continue
            point = json.loads((folder / "sweep_point.json").read_text())
            results = json.loads(results_path.read_text())
            args = json.loads((folder / "args.json").read_text())
            metric = main_metric(point["task"])
            protocol = results.get("data_protocol", {})
            wall = folder / "wall_seconds.txt"
            reused = folder / "reused_from.txt"
            seconds = results.get("wall_seconds") or (float(wall.read_text()) if wall.is_file() else None)
            last, best = results.get("last_evaluation") or {}, results.get("best_evaluation") or {}
            score = results.get(f"eval_{metric}")
            rows.append({
                **point,
                "method": args.get("method"),
                "pooling": args.get("pooling", "pooler"),
                "metric": metric,
                "score": score,
                "last_score": last.get(f"eval_{metric}", score),
                "selection": "best epoch" if best else "last",
                "best_epoch": best.get("epoch"),
                "epochs_run": last.get("epoch"),
                "protocol": args.get("protocol"),
                "trainable_params": results.get("trainable_params"),
                "method_params": results.get("method_params"),
                "head_params": results.get("head_params"),
                "train_split": protocol.get("train_split"),
                "eval_split": "; ".join(
                    k if v == k else f"{k}: {v}" for k, v in protocol.get("eval_splits", {}).items()
                ),
                "wall_seconds": None if reused.is_file() else seconds,
                "cpu_seconds": None if reused.is_file() else results.get("cpu_seconds"),
                "prepare_seconds": None if reused.is_file() else results.get("prepare_seconds"),
                "output_dir": str(folder),
                "reused_from": reused.read_text().strip() if reused.is_file() else None,
            })  # fmt: skip
    return rows


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    atomic_write_text(path, _csv_text([COLUMNS, *([row.get(c) for c in COLUMNS] for row in rows)]))


def _csv_text(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(["" if v is None else v for v in row] for row in rows)
    return buffer.getvalue()


_FLOATS = ("score", "last_score", "best_epoch", "epochs_run", "wall_seconds", "cpu_seconds", "prepare_seconds")


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in _FLOATS:
            row[key] = float(row[key]) if row.get(key) else None
        for key in ("layer", "bottleneck_dim", "seed", "trainable_params", "method_params", "head_params"):
            row[key] = int(float(row[key])) if row.get(key) not in (None, "") else None
    return rows


SCORES = ("reported", "last")


def select_score(rows: list[dict[str, Any]], score: str) -> list[dict[str, Any]]:
    """The rows with ``score`` in their score column: ``reported`` (each run's reported score, its best epoch where
    it selects one on the dev set) or ``last`` (its last epoch's, which no selection on dev has flattered)."""
    if score not in SCORES:
        raise ValueError(f"score {score!r}: must be one of {', '.join(SCORES)}")
    if score == "reported":
        return rows
    return [{**r, "score": r["last_score"] if r.get("last_score") is not None else r["score"]} for r in rows]


RUN_KEY = ("task", "variant", "layer", "bottleneck_dim", "seed")
"""What makes two CSV rows the same experiment, whatever sweep ran it."""


def sweep_rows(rows: list[dict[str, Any]], sweep: str, where: str) -> list[dict[str, Any]]:
    """The rows of ``sweep``, or of each sweep of a comma-separated list ("a,b"): one experiment run under two
    precisions' sweep files, say, makes one table. A run (task, variant, layer, bottleneck, seed) that several of
    them hold is taken from the first one listed. A sweep with no rows is an error (:class:`ConfigError`) naming
    it and the sweeps ``rows`` do have (``where`` says where they were read: "in runs.csv", "under ROOT")."""
    names = sweep.split(",")
    found = list(dict.fromkeys(r["sweep"] for r in rows))
    missing = [name for name in names if name not in found]
    if missing:
        raise ConfigError(
            f"no runs of sweep {', '.join(map(repr, missing))} {where}; sweeps found: {', '.join(found) or 'none'}"
        )
    mine, taken = [], set()
    for name in names:
        own = [r for r in rows if r["sweep"] == name and tuple(r[k] for k in RUN_KEY) not in taken]
        taken |= {tuple(r[k] for k in RUN_KEY) for r in own}
        mine += own
    return mine


def sources_note(rows: list[dict[str, Any]], axis: str = "task") -> list[str]:
    """A footer line saying which cells (a variant at a value of ``axis``) came from which sweep, when ``rows`` come
    from more than one; the sweep with the most cells is named as holding the rest."""
    cells: dict[str, set] = defaultdict(set)
    for row in rows:
        cells[row.get("sweep")].add((row["variant"], row.get(axis)))
    if len(cells) < 2:
        return []
    order = {v: i for i, v in enumerate(dict.fromkeys(r["variant"] for r in rows))}
    main, *others = sorted(cells, key=lambda name: -len(cells[name]))
    parts = []
    for name in others:
        by_value: dict[Any, list[str]] = defaultdict(list)
        for variant, value in sorted(cells[name], key=lambda cell: (str(cell[1]), order[cell[0]])):
            by_value[value].append(variant)
        parts.append(f"from sweep {name}: " + "; ".join(f"{v}: {', '.join(vs)}" for v, vs in by_value.items()))
    return [f"Cells {'; '.join(parts)}; every other cell from sweep {main}."]


def select_values(rows: list[dict[str, Any]], column: str, names: str, where: str) -> list[dict[str, Any]]:
    """The rows whose ``column`` is one of the comma-separated ``names`` (``--variants``, ``--tasks`` of the table
    and plot scripts), in the order of ``names``; a name with no row is an error (:class:`ConfigError`) naming it,
    ``where`` the rows came from and the values they have."""
    wanted = names.split(",")
    have = list(dict.fromkeys(r[column] for r in rows))
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise ConfigError(
            f"--{column}s {','.join(missing)}: no runs of {where} have that {column}; its {column}s: {','.join(have)}"
        )
    return sorted((r for r in rows if r[column] in wanted), key=lambda r: wanted.index(r[column]))


def select_variants(rows: list[dict[str, Any]], names: str, where: str) -> list[dict[str, Any]]:
    """The rows of the comma-separated variants ``names``, in that order (:func:`select_values`)."""
    return select_values(rows, "variant", names, where)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, dict[str, Any]]:
    """Mean, std and count of ``score`` (x100) grouped by ``keys``."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("score") is not None and not math.isnan(row["score"]):
            groups[tuple(row[k] for k in keys)].append(100 * row["score"])
    return {key: dict(zip(("mean", "std"), mean_std(v)), n=len(v)) for key, v in groups.items()}


def table1(rows: list[dict[str, Any]], raw: tuple[str, ...], full: str) -> dict[str, Any]:
    """Per (variant, task): mean, std, n; plus relative improvement and gap bridged against the best raw row
    (``references``: per task, the best raw row's and full fine-tuning's mean).

    Only whole seeds count: a seed enters a task's column once every row of the table (every variant in
    ``rows``) has finished it on that task, so that all cells of a column average the same seeds and a column
    appears only once it is whole (a sweep stopped part-way leaves its last seed, or its last task, out). Gap
    bridged is left empty where full fine-tuning does not beat the best raw row (there is no gap to bridge).
    """
    every, by_seed = {row["variant"] for row in rows}, defaultdict(set)
    for row in rows:
        by_seed[(row["task"], row["seed"])].add(row["variant"])
    rows = [r for r in rows if by_seed[(r["task"], r["seed"])] == every]
    stats = aggregate(rows, ("variant", "task"))
    tasks = sorted({t for _, t in stats}, key=list(TASKS).index)
    variants = list(dict.fromkeys(v for v, _ in stats))
    derived: dict[tuple[str, str], dict[str, float | None]] = {}
    references: dict[str, dict[str, float | None]] = {}
    for task in tasks:
        raws = [stats[(r, task)]["mean"] for r in raw if (r, task) in stats]
        best_raw = max(raws) if raws else None
        full_score = stats.get((full, task), {}).get("mean")
        references[task] = {"best_raw": best_raw, "full": full_score}
        for variant in variants:
            if (variant, task) not in stats or best_raw is None:
                continue
            score = stats[(variant, task)]["mean"]
            improvement = (score - best_raw) / abs(best_raw) if best_raw else None
            gap = None
            if full_score is not None and full_score > best_raw:
                gap = (score - best_raw) / (full_score - best_raw)
            derived[(variant, task)] = {"relative_improvement": improvement, "gap_bridged": gap}
    notes = {}
    for task in tasks:
        protocols = sorted(
            {(r["train_split"], r["eval_split"]) for r in rows if r["task"] == task and r["train_split"]}
        )
        if any(train != "train" for train, _ in protocols):
            notes[task] = "; ".join(f"trained on {train}, evaluated on {_sources(test)}" for train, test in protocols)
    known = [r for r in rows if r.get("method_params") is not None]
    module = {v: sorted({r["method_params"] for r in known if r["variant"] == v}) for v in variants} if known else {}
    heads = sorted({r["head_params"] for r in rows if r.get("head_params") is not None})
    return {"tasks": tasks, "variants": variants, "stats": stats, "derived": derived, "notes": notes,
            "params": module, "head_params": heads, "references": references,
            "sources": sources_note(rows)}  # fmt: skip


def _count(values: list[int]) -> str:
    """``1,922``, or the range ``148,225-148,610`` of several values; empty for none."""
    return "" if not values else f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}-{values[-1]:,}"


def _sources(eval_split: str) -> str:
    """Where the evaluation data came from, from a CSV ``eval_split`` cell ("split" or "split: source"; "; "
    between splits)."""
    return "; ".join(part.partition(": ")[2] or part for part in eval_split.split("; "))


CELLS = ("score", "relative_improvement", "gap_bridged")
"""What the task cells of :func:`format_table` can show."""


def format_table(
    table: dict[str, Any], style: str = "markdown", labels: dict[str, str] | None = None, cells: str = "score"
) -> str:
    """Markdown, CSV or LaTeX table: one row per variant, one column per task, plus the averages of relative
    improvement and gap bridged over the tasks where they are defined. The task cells show, by ``cells``, the
    score (mean +- std (n)) or that row's relative improvement or gap bridged on the task. Tasks trained under an
    offline protocol (not on their train file) are marked with a dagger and explained under the table."""
    if cells not in CELLS:
        raise ValueError(f"cells={cells!r}: must be one of {', '.join(CELLS)}")
    labels = labels or {}
    tasks, stats, derived = table["tasks"], table["stats"], table["derived"]
    notes = table.get("notes", {})
    params = table.get("params", {})
    header = ["method", *(["params"] if params else []), *(f"{t}†" if t in notes else t for t in tasks)]
    header += ["avg rel. impr.", "avg gap bridged"]
    footer = [f"† {task}: {note}." for task, note in notes.items()]
    if params:
        footer.append(
            "params: the trainable parameters of the method itself; every row also trains the task's head ("
            f"{_count(table.get('head_params', []))} parameters)."
        )
    footer += table.get("sources", [])
    body = []
    for variant in table["variants"]:
        row = [labels.get(variant, variant), *([_count(params.get(variant, []))] if params else [])]
        if cells == "score":
            row += [_cell(stats.get((variant, task))) for task in tasks]
        else:
            row += [_percent([derived.get((variant, task), {}).get(cells)]) for task in tasks]
        for key in ("relative_improvement", "gap_bridged"):
            row.append(_percent([derived[(variant, t)][key] for t in tasks if (variant, t) in derived]))
        body.append(row)
    return render(header, body, style, footer)


def _percent(values: list[float | None]) -> str:
    """The mean of the defined ``values`` as a percentage; empty when none is defined."""
    values = [v for v in values if v is not None]
    return f"{100 * statistics.fmean(values):.1f}%" if values else ""


def _cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return ""
    return f"{s['mean']:.1f} ({s['n']})" if s["n"] == 1 else f"{s['mean']:.1f} ± {s['std']:.1f} ({s['n']})"


def axis_table(rows: list[dict[str, Any]], axis: str, raw: tuple[str, ...], full: str) -> dict[str, Any]:
    """Per variant, mean/std/n at each value of ``axis`` (``layer`` or ``bottleneck_dim``), its best value, and the
    gap that best value bridges between the best raw cell (any of ``raw``, any axis value) and ``full``."""
    stats = aggregate(rows, ("variant", axis))
    columns = sorted({value for _, value in stats if value is not None})
    variants = list(dict.fromkeys(v for v, _ in stats))
    raws = [s["mean"] for (v, _), s in stats.items() if v in raw]
    best_raw = max(raws) if raws else None
    full_score = next((s["mean"] for (v, _), s in stats.items() if v == full), None)
    best = {}
    for variant in variants:
        key, top = max(((k, s) for k, s in stats.items() if k[0] == variant), key=lambda item: item[1]["mean"])
        gap = None
        if best_raw is not None and full_score is not None and full_score > best_raw:
            gap = (top["mean"] - best_raw) / (full_score - best_raw)
        best[variant] = {"at": key[1], "mean": top["mean"], "gap_bridged": gap}
    return {"axis": axis, "columns": columns, "variants": variants, "stats": stats, "best": best,
            "best_raw": best_raw, "full": full_score, "sources": sources_note(rows, axis)}  # fmt: skip


def format_axis_table(table: dict[str, Any], style: str = "markdown") -> str:
    """One row per variant, one column per axis value (a variant without the axis fills a "not per <axis>"
    column), then its best cell and the gap that cell bridges."""
    axis, columns, stats = table["axis"], table["columns"], table["stats"]
    prefix = {"layer": "L", "bottleneck_dim": "r="}.get(axis, f"{axis}=")
    other = [None] if any(value is None for _, value in stats) else []
    header = ["method", *(f"{prefix}{c}" for c in columns), *(["not per " + axis.replace("_", " ")] if other else [])]
    header += ["best", "gap bridged"]
    body = []
    for variant in table["variants"]:
        best = table["best"][variant]
        where = "" if best["at"] is None else f" ({prefix}{best['at']})"
        gap = "" if best["gap_bridged"] is None else f"{100 * best['gap_bridged']:.0f}%"
        cells = [_cell(stats.get((variant, c))) for c in [*columns, *other]]
        body.append([variant, *cells, f"{best['mean']:.1f}{where}", gap])
    footer = []
    if table["best_raw"] is not None and table["full"] is not None:
        footer = [
            f"gap bridged = (best - best raw) / (full fine-tuning - best raw), with best raw {table['best_raw']:.1f}"
            f" (the best probe row at any {axis.replace('_', ' ')}) and full fine-tuning {table['full']:.1f}."
        ]
    footer += table.get("sources", [])
    return render(header, body, style, footer)


def render(header: list[str], body: list[list[str]], style: str, footer: list[str]) -> str:
    """A table as Markdown (with ``footer`` lines under it), CSV (no footer, no daggers) or LaTeX (footer as
    comments)."""
    if style == "csv":
        return _csv_text([[c.rstrip("†") for c in header], *body])
    if style == "latex":
        lines = [
            "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
            "\\toprule",
            " & ".join(header) + " \\\\",
            "\\midrule",
        ]
        lines += [" & ".join(c.replace("±", "$\\pm$").replace("%", "\\%") for c in row) + " \\\\" for row in body]
        lines = [line.replace("†", "$^\\dagger$") for line in lines]
        notes_tex = [f"% {line.replace('†', 'dagger')}" for line in footer]
        return "\n".join([*lines, "\\bottomrule", "\\end{tabular}", *notes_tex]) + "\n"
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines + ([""] + footer if footer else [])) + "\n"
