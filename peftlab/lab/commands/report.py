"""Markdown table of finished runs: peftlab report runs/full/* [--commands]

One row per run folder: task, method, trainable parameters, the task's dev metrics (x100), wall time (from
wall_seconds.txt when the launching script wrote one, else the Trainer's train_runtime), and the frozen-layers mode.
With --commands, the exact command of each run (from its run_config.json) is listed below the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from peftlab.glue.tasks import get_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="peftlab report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--commands", action="store_true")
    args = parser.parse_args(argv)
    print("| task | method | trainable params | dev metrics (x100) | wall time (s) | train examples |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    commands = []
    for folder in map(Path, args.runs):
        if not (folder / "all_results.json").is_file():
            continue
        results = json.loads((folder / "all_results.json").read_text())
        config = json.loads((folder / "run_config.json").read_text())
        task = get_task(config["task"])
        names = [*task.metrics, *(["combined_score"] if len(task.metrics) > 1 else [])]
        metrics = ", ".join(f"{n} {100 * results[f'eval_{n}']:.1f}" for n in names if f"eval_{n}" in results)
        wall_file = folder / "wall_seconds.txt"
        wall = float(wall_file.read_text()) if wall_file.is_file() else results.get("train_runtime", float("nan"))
        # A run_config.json without peft_args is a full fine-tuning run.
        peft = config.get("peft_args", {})
        method = peft.get("method", "full")
        if "adapter" in method:
            method += f" {peft['adapter_form']} {peft['placement']} r={peft['bottleneck_dim']}"
        method += f" ({config['model_args'].get('pooling', 'pooler')} pooling)"
        trainable = results.get("trainable_params")
        trainable = f"{trainable:,}" if trainable is not None else "all"
        print(f"| {task.name} | {method} | {trainable} | {metrics} | {wall:.0f} | {results.get('train_samples', '')} |")
        commands.append(f"{folder}: " + " ".join(shlex.quote(c) for c in config["command"][1:]))
    if args.commands:
        print("\nCommands:\n")
        for command in commands:
            print(f"- `{command}`")
    return 0
