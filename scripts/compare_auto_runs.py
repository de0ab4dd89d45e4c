#!/usr/bin/env python
"""Compare the ``--target_layers auto`` records of two copies of the same runs, e.g. runs of record made before a
fix and the same runs made again after it:

    git archive 2531e9c docs/results/runs/auto_layer_check | tar -x -C /tmp/old
    python scripts/compare_auto_runs.py /tmp/old/docs/results/runs/auto_layer_check docs/results/runs/auto_layer_check

For every ``<task>/<variant>/<seed>`` auto run present in both: the same chosen layer? the same selection-split
score at every rung of every candidate? the same proxy value of every candidate? One line per run, then the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def record(path: Path) -> dict:
    auto = json.loads(path.read_text())["auto_layer"]
    return {
        "choice": auto["chosen_layer"],
        "scores": {k: [e[auto["metric"]] for e in c["evaluations"]] for k, c in auto["candidates"].items()},
        "proxies": {k: c["proxy_gradient_norm"] for k, c in auto["candidates"].items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    args = parser.parse_args()
    old_root, new_root = Path(args.old), Path(args.new)
    same = {"choice": 0, "scores": 0, "proxies": 0}
    runs = 0
    for new in sorted(new_root.glob("*/*_auto*/seed*/all_results.json")):
        old = old_root / new.relative_to(new_root)
        if not old.is_file():
            continue
        a, b = record(old), record(new)
        runs += 1
        verdicts = {key: a[key] == b[key] for key in same}
        for key, equal in verdicts.items():
            same[key] += equal
        changes = ", ".join(k if v else f"{k} DIFFER" for k, v in verdicts.items())
        print(f"{new.parent.relative_to(new_root)}: layer {a['choice']} -> {b['choice']}; {changes}")
    print(f"{runs} runs in both: the same choice in {same['choice']}, the same selection-split scores in "
          f"{same['scores']}, the same proxies in {same['proxies']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
