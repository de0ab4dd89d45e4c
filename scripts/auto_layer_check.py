#!/usr/bin/env python
"""How good is ``--target_layers auto``? Its runs against the full layer sweeps of the same sweep:

    python scripts/auto_layer_check.py docs/results/runs.csv --sweep auto_layer_check --out docs/results/auto_layer_check

For each task and method (rows ``<method>`` at every layer, ``<method>_auto`` with the layer chosen
automatically; same seeds): the best layer by mean dev score over the seeds, its mean and standard deviation,
the auto runs' mean, how far below the best layer that is in the best layer's seed standard deviations, the layers
auto chose, auto's cost as a multiple of one run at a fixed layer (its CPU time in units of its own final training,
times the fixed-layer run at the chosen layer over the mean run of the layer sweep, same seed) and of the full
sweep, how often the zero-training proxy (gradient norm at initialisation) picked the same layer as the halving and
as the best layer, the top layer's score (the choice made without any selection), how well the halving's first rung
and the proxy rank the layers as their dev scores do (Spearman's rho), and how well one seed's fixed-layer runs
rank them as the other seeds' do (a ceiling for any choice), and how many layers are within one std of the best
(what a layer drawn at random would pass with). Each auto variant of a method (``<method>_auto``,
``<method>_auto_warm``...) gets rows and a summary line of its own, and a line judging issue 18's targets: met, not
met (missed even if every missing task passed), or open. Writes <out>.md and <out>.csv.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from peftlab.io import atomic_write_text
from peftlab.lab.results import read_csv, render


def cost(row: dict) -> float | None:
    path = Path(row["output_dir"]) / "all_results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return results.get("cpu_seconds") or results.get("wall_seconds")


def auto_record(row: dict) -> dict:
    return json.loads((Path(row["output_dir"]) / "all_results.json").read_text())["auto_layer"]


def own_ratio(auto_row: dict, record: dict, own: float | None) -> float | None:
    """An auto run's CPU time in units of its own final training: (choice + final training) / final training,
    both measured in the auto run's process; without the choice's CPU time in the record, over ``own`` (the
    fixed-layer run at the chosen layer)."""
    whole, choice = cost(auto_row), record.get("selection_cpu_seconds")
    if whole and choice is not None and whole > choice:
        return whole / (whole - choice)
    return whole / own if whole and own else None


def stds_below(best_mean: float, best_std: float, scores: list[float]) -> float:
    """How far the mean of ``scores`` is below the best layer's mean, in the best layer's seed standard deviations."""
    return (best_mean - statistics.fmean(scores)) / best_std if best_std > 0 else float("nan")


def stds(value: float | None) -> str:
    """A distance in seed stds as the table shows it; "-" where there is no std to measure in (one seed so far)."""
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def with_std(cells: list[dict]) -> list[dict]:
    """The cells with a seed std to measure in (two seeds or more); one seed so far is shown, not judged or counted."""
    return [c for c in cells if not math.isnan(c["below"])]


def rho(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation of ``x`` and ``y``; None for fewer than two points or a constant side."""
    from scipy.stats import spearmanr

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y)[0])


def rank_agreement(record: dict, final: dict[int, float], signal: str) -> float | None:
    """Spearman's rho, over the candidate layers, between one auto run's selection signal and the dev scores of the
    fixed-layer runs of the same seed (``final``: layer -> score): ``signal`` "rung" is each candidate's score at
    the halving's first rung (every candidate has one; negated when lower is better), "proxy" its gradient-norm
    proxy. None without the record's candidates."""
    candidates = {int(layer): c for layer, c in record.get("candidates", {}).items() if int(layer) in final}
    sign = 1.0 if record.get("greater_is_better", True) else -1.0
    if signal == "rung":
        values = {k: sign * c["evaluations"][0][record["metric"]] for k, c in candidates.items() if c["evaluations"]}
    else:
        values = {k: c["proxy_gradient_norm"] for k, c in candidates.items()}
    return rho([values[k] for k in sorted(values)], [final[k] for k in sorted(values)])


def seed_agreement(finals_by_seed: dict[int, dict[int, float]]) -> list[float | None]:
    """For each seed, Spearman's rho over the layers between its fixed-layer dev scores and the mean of the other
    seeds': how well one full run per layer foretells the layer order of other seeds (the ceiling of any choice
    made with one seed)."""
    out = []
    for seed, scores in finals_by_seed.items():
        others = [f for s, f in finals_by_seed.items() if s != seed]
        layers = sorted(scores)
        mean = [statistics.fmean(f[layer] for f in others) for layer in layers] if others else []
        out.append(rho([scores[layer] for layer in layers], mean) if others else None)
    return out


def agreement(values: list[float | None]) -> str:
    """The mean over seeds of :func:`rank_agreement`, as the table shows it."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    return f"{statistics.fmean(known):+.2f}" if known else "-"


def judge(fixed: list[dict], auto: list[dict], reference: int | None = None) -> dict | None:
    """One task-method cell: the fixed-layer runs of a method against the runs of one of its auto variants (the
    seeds that both have), and against ``reference``, a layer fixed beforehand (e.g. the paper's); None when they
    share no seed."""
    seeds = sorted({r["seed"] for r in auto} & {r["seed"] for r in fixed})
    by_layer = defaultdict(dict)
    for r in fixed:
        by_layer[r["layer"]][r["seed"]] = r
    complete = {layer: runs for layer, runs in by_layer.items() if all(s in runs for s in seeds)}
    if not seeds or not complete:
        return None
    means = {layer: statistics.fmean(100 * runs[s]["score"] for s in seeds) for layer, runs in complete.items()}
    best = max(means, key=means.get)
    best_std = statistics.stdev([100 * complete[best][s]["score"] for s in seeds]) if len(seeds) > 1 else 0.0
    auto_rows = {r["seed"]: r for r in auto if r["seed"] in seeds}
    auto_scores = [100 * auto_rows[s]["score"] for s in seeds]
    records = {s: auto_record(auto_rows[s]) for s in seeds}
    one_run = [statistics.fmean(c for c in (cost(runs[s]) for runs in complete.values()) if c) for s in seeds]
    chosen = [records[s]["chosen_layer"] for s in seeds]
    own = [cost(by_layer[c][s]) if s in by_layer.get(c, {}) else None for s, c in zip(seeds, chosen)]
    # auto's CPU time over that of its own final training (same process, so the same load on the machine); its
    # final training is the fixed-layer run at the chosen layer, so this ratio times that run's CPU time is auto's
    # cost as if it had run beside the layer sweep
    ratios = [own_ratio(auto_rows[s], records[s], o) for s, o in zip(seeds, own)]
    vs_run = statistics.fmean(r * o / m for r, o, m in zip(ratios, own, one_run) if r and o and m)
    vs_own = [r for r in ratios if r]
    # the final run is the fixed-layer run of the chosen layer
    finals = [
        auto_rows[s]["score"] == by_layer[c][s]["score"] for s, c in zip(seeds, chosen) if s in by_layer.get(c, {})
    ]
    proxy = [records[s]["proxy_choice"] for s in seeds]
    # the proxy strategy's score: the fixed-layer run at the proxy's layer (auto's final run is that run)
    proxy_scores = [100 * complete[p][s]["score"] for p, s in zip(proxy, seeds) if p in complete]
    proxy_below = stds_below(means[best], best_std, proxy_scores) if len(proxy_scores) == len(seeds) else None
    finals_by_seed = {s: {layer: runs[s]["score"] for layer, runs in complete.items()} for s in seeds}
    rung_rho = [rank_agreement(records[s], finals_by_seed[s], "rung") for s in seeds]
    proxy_rho = [rank_agreement(records[s], finals_by_seed[s], "proxy") for s in seeds]
    seed_rho = seed_agreement(finals_by_seed)
    top = max(complete)  # the baseline a user has without any choice: the top layer (the cheapest run with the cache)
    # what a whole layer sweep buys (one run per layer, the winner read off dev): for every ordered pair of seeds, the
    # layer whose run scored best with one seed, scored by the other seed's run at that layer
    swept = [
        100 * complete[max(finals_by_seed[other], key=finals_by_seed[other].get)][s]["score"]
        for s in seeds
        for other in seeds
        if other != s
    ]
    reference_costs = [cost(complete[reference][s]) for s in seeds] if reference in means else []
    cell = {
        "vs_run": vs_run, "below": stds_below(means[best], best_std, auto_scores), "proxy_below": proxy_below,
        "rung_rho": rung_rho, "proxy_rho": proxy_rho, "seed_rho": seed_rho,
        "top_below": stds_below(means[best], best_std, [means[top]]), "finals": finals,
        "sweep_below": stds_below(means[best], best_std, swept) if swept else None,
        "reference_below": stds_below(means[best], best_std, [means[reference]]) if reference in means else None,
        # the reference layer's runs cost over the mean fixed-layer run (no choice to pay for), mean over the seeds
        "reference_cost": statistics.fmean(c / m for c, m in zip(reference_costs, one_run))
        if reference_costs and all(reference_costs) else None,
        "near": sum(stds_below(means[best], best_std, [m]) <= 1.0 for m in means.values()), "layers": len(means),
    }  # fmt: skip
    cell["row"] = [
        f"L{best}", f"{means[best]:.1f} ± {best_std:.1f}",
        f"{statistics.fmean(auto_scores):.1f} ± {statistics.stdev(auto_scores) if len(seeds) > 1 else 0:.1f}",
        stds(cell["below"]), ",".join(f"L{c}" for c in chosen), f"{vs_run:.2f}x",
        f"{statistics.fmean(vs_own):.2f}x" if vs_own else "-", f"{vs_run / len(complete):.2f}x",
        f"{statistics.fmean(proxy_scores):.1f} ({stds(proxy_below)})" if proxy_below is not None else "-",
        f"L{top}: {means[top]:.1f} ({stds(cell['top_below'])})",
        f"{statistics.fmean(swept):.1f} ({stds(cell['sweep_below'])})" if swept else "-",
        f"L{reference}: {means[reference]:.1f} ({stds(cell['reference_below'])})" if reference in means else "-",
        f"{sum(p == c for p, c in zip(proxy, chosen))}/{len(seeds)}",
        f"{sum(p == best for p in proxy)}/{len(seeds)}", agreement(rung_rho), agreement(proxy_rho), agreement(seed_rho),
        f"{cell['near']}/{len(means)}" if best_std > 0 else "-", ",".join(map(str, seeds)),
    ]  # fmt: skip
    return cell


def count(judged: list[dict], key: str) -> int:
    """How many of the cells are within one std of the best layer by ``key`` ("below", "proxy_below"...)."""
    return sum(c[key] is not None and c[key] <= 1.0 for c in judged)


def by_method(judged: list[dict], key: str, methods: list[str]) -> str:
    """:func:`count` for each method: "adapter on 4 of 5 tasks, lora on 3 of 5 tasks"."""
    return ", ".join(
        f"{m} on {count([c for c in judged if c['method'] == m], key)} of {sum(c['method'] == m for c in judged)} tasks"
        for m in methods
    )


TARGET_TASKS, TARGET_WITHIN, TARGET_COST = 5, 4, 2.0
"""Issue 18's targets: within one seed std of the best layer on at least 4 of the 5 tasks (for every method), at no
more than 2x the cost of one fixed-layer run."""


def verdict(suffix: str, judged: list[dict], methods: list[str]) -> str:
    """The targets, judged for one auto variant: met, not met (even if the missing tasks all passed), or open. A cell
    with one seed so far (no std to measure in) is not judged yet."""
    judged = with_std(judged)
    if not judged:
        return f"Targets for auto{suffix}: no cell with two seeds yet."
    within = {m: count([c for c in judged if c["method"] == m], "below") for m in methods}
    tasks = {m: sum(c["method"] == m for c in judged) for m in methods}
    costs = [c["vs_run"] for c in judged]
    missed = any(within[m] + TARGET_TASKS - tasks[m] < TARGET_WITHIN for m in methods) or max(costs) > TARGET_COST
    done = all(tasks[m] >= TARGET_TASKS for m in methods)
    state = "not met" if missed else "met" if done else "open"
    parts = ", ".join(f"{m} within on {within[m]} of {tasks[m]} tasks" for m in methods)
    return (
        f"Targets for auto{suffix} (within one std on at least {TARGET_WITHIN} of {TARGET_TASKS} tasks for each method, "
        f"at most {TARGET_COST:g}x one run in every cell): {parts}; cost {min(costs):.2f}-{max(costs):.2f}x one run: "
        f"{state}."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--sweep", default="auto_layer_check")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument(
        "--reference", action="append", default=[], metavar="METHOD=LAYER",
        help="a layer fixed beforehand for a method's fixed-layer variant (e.g. the paper's layer, adapter=2), shown "
        "beside auto and judged as it is; repeat for each method",
    )  # fmt: skip
    args = parser.parse_args()
    references = {}
    for item in args.reference:
        method, _, layer = item.partition("=")
        if not method or not layer.strip().isdigit():
            parser.error(f"--reference {item!r}: expected METHOD=LAYER, e.g. adapter=2")
        references[method.strip()] = int(layer)
    rows = [r for r in read_csv(args.csv) if r["sweep"] == args.sweep and r["score"] is not None]
    header = ["task", "method", "best layer", "best (mean ± std)", "auto (mean ± std)", "below best (std)",
              "auto's layers", "cost vs one run", "cost vs its layer's run", "cost vs sweep",
              "proxy alone (below best)", "top layer (below best)", "sweep of another seed (below best)",
              "reference layer (below best)", "proxy = halving", "proxy = best",
              "rung 1 ~ dev (rho)", "proxy ~ dev (rho)", "seed ~ seeds (rho)", "layers within 1 std", "seeds"]  # fmt: skip
    body, cells, finals = [], defaultdict(list), []
    fixed_variants = sorted({r["variant"] for r in rows if "_auto" not in r["variant"]})
    for task in dict.fromkeys(r["task"] for r in rows):
        for method in fixed_variants:
            fixed = [r for r in rows if r["task"] == task and r["variant"] == method]
            # a row per auto variant of the method: <method>_auto, and others such as <method>_auto_warm
            for variant in sorted({r["variant"] for r in rows if r["variant"].startswith(f"{method}_auto")}):
                auto = [r for r in rows if r["task"] == task and r["variant"] == variant]
                cell = judge(fixed, auto, references.get(method))
                if cell is not None:
                    cell["method"] = method
                    suffix = variant.removeprefix(f"{method}_auto")
                    cells[suffix].append(cell)
                    finals += cell["finals"]
                    body.append([task, method + (f" ({variant.removeprefix(method + '_')})" if suffix else ""),
                                 *cell["row"]])  # fmt: skip

    measured = {suffix: with_std(judged) for suffix, judged in cells.items()}
    unmeasured = {suffix: len(cells[suffix]) - len(judged) for suffix, judged in measured.items()}
    summary = [
        f"auto{suffix}{f' (variants <method>_auto{suffix})' if suffix else ''}: within one seed standard deviation "
        f"of the best layer in {count(judged, 'below')} of {len(judged)} task-method cells; its proxy alone: "
        f"{count(judged, 'proxy_below')} of {len(judged)}"
        f"{f' ({unmeasured[suffix]} more with one seed so far, not counted).' if unmeasured[suffix] else '.'}"
        for suffix, judged in measured.items()
    ]
    summary += [verdict(suffix, judged, fixed_variants) for suffix, judged in cells.items()]
    summary += [
        f"Rank agreement with the dev scores of auto{suffix}'s layers (Spearman's rho, mean over its cells' seeds): "
        f"first rung {agreement([v for c in judged for v in c['rung_rho']])}, proxy "
        f"{agreement([v for c in judged for v in c['proxy_rho']])}."
        for suffix, judged in cells.items()
    ]
    if any(cells.values()):
        judged = next(iter(cells.values()))
        summary.append(f"One seed's fixed-layer runs against the other seeds' mean (the same rho): "
                       f"{agreement([v for c in judged for v in c['seed_rho']])}.")  # fmt: skip
    if any(measured.values()):  # the baselines need no auto run: read them off the first variant's cells
        judged = next(iter(measured.values()))
        summary.append(f"No choice at all, the top layer: {count(judged, 'top_below')} of {len(judged)}; a layer drawn "
                       f"at random: {sum(c['near'] / c['layers'] for c in judged):.1f} of {len(judged)} expected.")  # fmt: skip
        layers = max(c["layers"] for c in judged)
        referenced = [c for c in judged if c["reference_below"] is not None]
        if referenced:
            named = ", ".join(f"{m} L{layer}" for m, layer in references.items())
            costs = [c["reference_cost"] for c in referenced if c["reference_cost"] is not None]
            summary.append(f"The reference layers, fixed beforehand ({named}): {count(referenced, 'reference_below')} "
                           f"of {len(referenced)} ({by_method(referenced, 'reference_below', list(references))})"
                           f"{f', at {min(costs):.2f}-{max(costs):.2f}x one run' if costs else ''}.")  # fmt: skip
        summary.append(f"A whole layer sweep of another seed ({layers} runs, the layer best on its dev set taken): "
                       f"{count(judged, 'sweep_below')} of {len(judged)} ({by_method(judged, 'sweep_below', fixed_variants)}).")  # fmt: skip
    footer = [
        *summary,
        "below best = (best layer's mean - auto's mean) / best layer's seed std; cost vs its layer's run = auto's "
        "CPU time (choice and final training) over that of its final training, both measured in its own process "
        "(the final training is the fixed-layer run at the chosen layer); cost vs one run = that ratio times the "
        "CPU time of the fixed-layer run at the chosen layer over the mean CPU time of one fixed-layer run of the "
        "same seed (so auto runs made under another load on the machine than the sweep are compared fairly); cost "
        "vs sweep = the same over the whole layer sweep; proxy alone = the mean score of the fixed-layer runs at the "
        "layers the gradient-norm proxy ranked first (what --auto_layer_strategy proxy trains), and in brackets how "
        "far below the best layer that is, in its seed std; top layer = the same for the last layer, the choice a user "
        "makes without any selection (and the cheapest run with the frozen-prefix cache); sweep of another seed = the "
        "same for the layer that scored best on dev in another seed's fixed-layer runs (every ordered pair of seeds): "
        "what a whole layer sweep (one run per layer) buys a run with a new seed; reference layer = the same for a layer "
        "fixed beforehand (--reference; in docs/results the paper's layers as Table 1 scales them: the adapter's 5 of "
        "12 -> L2, LoRA's 10 of 12 -> L5); layers within 1 std = the "
        "layers whose mean is within one std of the best layer's (the best included), the chance that a layer drawn "
        "at random passes; rung 1 ~ dev and proxy ~ dev = how well the halving's first rung (each candidate's "
        "selection-split score after the first rung's steps) and the gradient-norm proxy rank the layers as their "
        "fixed-layer runs' dev scores do: Spearman's rho over the candidate layers, same seed, mean over the seeds "
        "(1: the same order; 0: unrelated; '-': no rung, as with the proxy strategy); seed ~ seeds = the same between "
        "one seed's fixed-layer dev scores and the mean of the other seeds', mean over the seeds: how far one full "
        "run per layer foretells another seed's layer order, a ceiling for any choice made with one seed; a "
        "method's other auto variants (e.g. adapter (auto_warm): --auto_warm_head) have rows of their own.",
        f"auto's final training gave exactly the score of the fixed-layer run at the layer it chose (same seed) in "
        f"{sum(finals)} of {len(finals)} runs.",
    ]
    for style, suffix in (("markdown", ".md"), ("csv", ".csv")):
        atomic_write_text(args.out + suffix, render(header, body, style, footer))
    print(render(header, body, "markdown", footer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
