#!/usr/bin/env python
"""Compare the ``--target_layers auto`` records of two copies of the same runs, e.g. runs of record made before a
fix and the same runs made again after it:

    git archive 2531e9c docs/results/runs/auto_layer_check | tar -x -C /tmp/old
    python scripts/compare_auto_runs.py /tmp/old/docs/results/runs/auto_layer_check docs/results/runs/auto_layer_check

For every ``<task>/<variant>/<seed>`` auto run present in both: the same chosen layer? the same selection-split
score at every rung of every candidate? the same proxy value of every candidate? One line per run, then the counts.

Where the new copy's records carry the margin of their choice (``margin`` in ``auto_layer``, since 6 December
2026) and the old root holds the method's fixed-layer runs (``<task>/<method>/L<layer>/seed<seed>``, as the sweeps
of ``scripts/sweeps/auto_layer_check*.json`` lay them out), each line also says whether the choice was told apart
from the runner-up, and how far the chosen layer's fixed-layer run of that seed is below the best layer's mean (the
layer best on average over the seeds), in that layer's seed std; the last line counts how often a choice told apart,
and one not told apart, was within one std.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from peftlab.lab.results import main_metric


def auto_record(path: Path) -> dict:
    return json.loads(path.read_text())["auto_layer"]


def record(auto: dict) -> dict:
    """What is compared of an ``auto_layer`` record."""
    return {
        "choice": auto["chosen_layer"],
        "scores": {k: [e[auto["metric"]] for e in c["evaluations"]] for k, c in auto["candidates"].items()},
        "proxies": {k: c["proxy_gradient_norm"] for k, c in auto["candidates"].items()},
    }


def below_best(root: Path, task: str, method: str, seed: int, layer: int) -> float | None:
    """How far the fixed-layer run of ``method`` at ``layer`` (this seed) is below the best layer's mean over the
    seeds, in the best layer's seed std; None without the fixed-layer runs (or with fewer than two seeds)."""
    key, scores = f"eval_{main_metric(task)}", {}
    for path in (root / task / method).glob("L*/seed*/all_results.json"):
        value = json.loads(path.read_text()).get(key)
        if value is not None:
            scores.setdefault(int(path.parent.parent.name[1:]), {})[int(path.parent.name[4:])] = value
    seeds = set.intersection(*(set(by_seed) for by_seed in scores.values())) if scores else set()
    if len(seeds) < 2 or seed not in scores.get(layer, {}):
        return None
    best = max(scores, key=lambda k: statistics.fmean(scores[k][s] for s in seeds))
    std = statistics.stdev(scores[best][s] for s in seeds)
    mean = statistics.fmean(scores[best][s] for s in seeds)
    return (mean - scores[layer][seed]) / std if std > 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    args = parser.parse_args()
    old_root, new_root = Path(args.old), Path(args.new)
    same = {"choice": 0, "scores": 0, "proxies": 0}
    runs, margins = 0, []  # margins: (told apart, within one std) per new run that records one
    for new in sorted(new_root.glob("*/*_auto*/seed*/all_results.json")):
        old = old_root / new.relative_to(new_root)
        if not old.is_file():
            continue
        new_auto = auto_record(new)
        a, b = record(auto_record(old)), record(new_auto)
        runs += 1
        verdicts = {key: a[key] == b[key] for key in same}
        for key, equal in verdicts.items():
            same[key] += equal
        changes = ", ".join(k if v else f"{k} DIFFER" for k, v in verdicts.items())
        line = f"{new.parent.relative_to(new_root)}: layer {a['choice']} -> {b['choice']}; {changes}"
        close = new_auto.get("margin") or {}
        if "separable" in close:
            task, variant, seed = new.parent.relative_to(new_root).parts
            below = below_best(old_root, task, variant.split("_auto")[0], int(seed.removeprefix("seed")), b["choice"])
            low, high = close["interval_90"]
            line += (f"; margin over L{close['runner_up']}: {100 * close['difference']:+.1f} ({low * 100:+.1f} to "
                     f"{high * 100:+.1f}), {'told apart' if close['separable'] else 'not told apart'}")  # fmt: skip
            if below is not None:
                line += f"; the chosen layer's run {below:.2f} stds below the best layer"
                margins.append((close["separable"], below <= 1.0))
        print(line)
    print(f"{runs} runs in both: the same choice in {same['choice']}, the same selection-split scores in "
          f"{same['scores']}, the same proxies in {same['proxies']}")  # fmt: skip
    if margins:
        apart = [within for separable, within in margins if separable]
        close_calls = [within for separable, within in margins if not separable]
        print(f"{len(margins)} with a margin and fixed-layer runs: told apart in {len(apart)}, of which {sum(apart)} "
              f"within one std of the best layer; not told apart in {len(close_calls)}, of which "
              f"{sum(close_calls)} within")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
