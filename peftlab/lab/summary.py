"""The few lines a run ends with: what was trained, how much of the model, the dev score it reports and its last
one, how the frozen layers and the precision ran, the time, and where the files are (the predictions too). Read from the run's folder (``all_results.json``, ``run_config.json``), so
a finished run's summary can be printed again at any time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError
from peftlab.glue.tasks import get_task


def main_metric_of(task_name: str, results: dict[str, Any]) -> str:
    """The task's main metric (a user file's: accuracy, or pearson for a regression)."""
    try:
        return get_task(task_name).main_metric
    except PeftlabError:
        return "pearson" if "eval_pearson" in results else "accuracy"


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def score_of(evaluation: dict[str, Any] | None, metric: str) -> str:
    if not evaluation or f"eval_{metric}" not in evaluation:
        return "-"
    epoch = evaluation.get("epoch")
    return f"{100 * evaluation[f'eval_{metric}']:.1f}" + (f" (epoch {epoch:g})" if epoch is not None else "")


def summary(output_dir: str | Path) -> str:
    """The summary of the finished run in ``output_dir``, a few lines."""
    out = Path(output_dir)
    results = json.loads((out / "all_results.json").read_text())
    return summary_of(results, json.loads((out / "run_config.json").read_text()), out)


def summary_of(results: dict[str, Any], config: dict[str, Any], out: Path) -> str:
    """:func:`summary` from the run's results and record as they are written into ``out``."""
    metric = main_metric_of(config["task"], results)
    total, trainable = results.get("total_params"), results.get("trainable_params")
    share = f" of {total:,} ({100 * trainable / total:.3g} %)" if total and trainable is not None else ""
    if results.get("method_params") is not None and results.get("head_params") is not None:
        share += f": the method {results['method_params']:,}, the head {results['head_params']:,}"
    best, last = results.get("best_evaluation"), results.get("last_evaluation")
    if best is not None:
        dev = f"{metric} best {score_of(best, metric)}, last {score_of(last, metric)}; reported: the best"
    elif last is not None:
        dev = f"{metric} last {score_of(last, metric)}; reported: the last"
    else:
        reported = f"{100 * results[f'eval_{metric}']:.1f}" if f"eval_{metric}" in results else "-"
        dev = f"{metric} {reported}"
    time_line = duration(results.get("wall_seconds", 0.0))
    if "train_runtime" in results:
        time_line += f" (training {duration(results['train_runtime'])})"
    files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    lines = [
        f"task       {config['task']}",
        f"method     {config['peft_args']['method']}",
        f"trainable  {trainable:,}{share}" if trainable is not None else "trainable  -",
        f"dev        {dev}",
    ]
    if str(config.get("frozen_layers_mode", "")).startswith("eval"):  # the cache's one contract: no dropout below
        default = "" if "cache_frozen_prefix" in config.get("asked", {}) else " (by default: --cache_frozen_prefix false runs them in train mode)"  # fmt: skip
        lines.append(f"frozen     {config['frozen_layers_mode'].removeprefix('eval (').removesuffix(')')}{default}")
    precision = config.get("precision") or {}
    if precision.get("training") not in (None, "fp32"):
        lines.append(f"precision  {precision['training']}")
    lines.append(f"time       {time_line}")
    lines.append(f"files      {out}/ ({', '.join(files)})")
    if results.get("predict_files"):
        lines.append(f"predicted  {', '.join(str(path) for path in results['predict_files'])}")
    return "\n".join(lines)
