"""``--target_layers auto``: choose the one layer a single-layer method goes to, then train it there.

The paper's central finding is that one small module at the right layer does most of the work, and that the
right layer matters. Finding it by a full layer sweep costs one run per layer and reads the winner off the dev set
it then reports. Here the choice is made on a *selection split* carved from the training set (never the dev
set), by successive halving over the candidate layers, run through Optuna: each candidate layer is a trial (the
layer a categorical parameter, one enqueued trial per layer), trained on the rest of the training set and
evaluated on the selection split at rungs of ``r``, ``2r``, ``4r``... steps, where :class:`~peftlab.lab.halving.SynchronousHalving`
(an Optuna pruner) keeps the better half of the trials and prunes the rest (equal scores told apart by the
selection loss); the last one left is the choice. The chosen configuration is then trained on the whole
training set and evaluated on dev as usual.

The rungs are complete, every live candidate reaching a rung before any is judged there, and each candidate trains
exactly as it would alone (:mod:`peftlab.lab.halving`).

Cost. The whole halving trains ``--auto_budget`` (default half) of the final run's steps, all candidates
together: with ``n`` candidates and reduction factor 2, ``r`` is that budget over ``n + n/2 + ...`` (6 layers:
``9r``). With the frozen-prefix cache, every candidate reads the cached input of its own layer (the fills of all
candidate layers are one pass over the selection data), so a layer-k candidate computes only layers k and up.

Proxy (``--auto_layer_strategy proxy`` uses it alone): the norm of the loss gradient that the method's
parameters receive at initialisation, averaged over a few batches of the selection training data, per layer;
for a zero-initialised module it measures how much the loss wants that layer to change (with a warm head, below,
beyond what the probe already fits). Its ranking is recorded beside the halving's in every run, so how often the two
agree can be counted (``scripts/auto_layer_check.py``); the halving takes its turns in the proxy's order.

Margin: the record says how far the chosen candidate is ahead of the runner-up at the last rung, with a paired
bootstrap of that difference over the selection split's examples (:func:`margin`); when its 90 % interval reaches
zero the split did not tell the two apart, ``separable`` is false and the run logs a warning. It judges the last
comparison only: a better layer cut at an earlier rung does not show in it.

Warm head (``--auto_warm_head``, the default; ``--auto_warm_head false`` gives every candidate a new head): every
candidate starts from the head of a linear probe, trained first on the frozen backbone for the final run's steps
(with the cache, on cached features: cheap). A new head's first steps learn what every candidate learns alike (the
class prior, the probe's features), and at short rungs that is most of what a candidate's score shows; from the
probe's head on, a rung's score shows what the module adds at its layer. The proxy is measured at the same head:
the gradient a zero-initialised module receives beside a trained probe is what the loss wants from that layer
beyond the probe. The final training starts from a new head as usual, so it is the fixed-layer run at the chosen
layer. How the warm and cold choices compare with the best layer of a full sweep: ``docs/results.md``, Part C.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import datasets
import numpy as np
import torch
from transformers import TrainerCallback

from peftlab.architectures import parse_layers
from peftlab.errors import ConfigError
from peftlab.lab.halving import Candidate, SynchronousHalving, best_layer, halving, rng_state, rung_steps, standing
from peftlab.methods.base import parse_method_string

logger = logging.getLogger("peftlab")

SELECTION_LIMIT = 1000
SCRATCH_PREFIX = "auto_layer_"
"""The candidates' scratch folders in the run's ``--output_dir`` (removed when the choice ends)."""
STRATEGIES = ("halving", "proxy")


@dataclass
class AutoLayerArguments:
    """Options of ``--target_layers auto`` (or ``--method adapter@auto``)."""

    auto_layers: str = field(
        default="all", metadata={"help": "Candidate layers for --target_layers auto: 'all', '1-4', '0,2,5'."}
    )
    auto_layer_strategy: str = field(
        default="halving",
        metadata={
            "help": "halving (successive halving through Optuna, proxy-ordered) or proxy (the gradient-norm proxy alone)."
        },
    )
    auto_selection_fraction: float = field(
        default=0.2,
        metadata={"help": "Share of the training set held out to choose the layer (at most 1,000 examples)."},
    )
    auto_budget: float = field(
        default=0.5,
        metadata={
            "help": "Steps of the whole successive halving (all candidates together), as a share of the final run's steps."
        },
    )
    auto_warm_head: bool = field(
        default=True,
        metadata={
            "help": "Start every candidate (the halving's, and the proxy's gradients) from the head of a linear probe "
            "trained first on the frozen backbone (the final run's steps), so that they measure the module rather "
            "than a new head (default; false: a new head for every candidate)."
        },
    )

    def __post_init__(self) -> None:
        if self.auto_layer_strategy not in STRATEGIES:
            raise ConfigError(
                f"--auto_layer_strategy {self.auto_layer_strategy!r} is not valid; choose one of {', '.join(STRATEGIES)}."
            )
        if not 0.0 < self.auto_selection_fraction < 1.0:
            raise ConfigError(f"--auto_selection_fraction {self.auto_selection_fraction} must be in (0, 1).")
        if not 0.0 < self.auto_budget <= 10.0:
            raise ConfigError(
                f"--auto_budget {self.auto_budget} must be in (0, 10] (a share of the final run's steps)."
            )


def wants_auto(method: str, target_layers: str) -> bool:
    """Whether the run asks for an automatic layer (``@auto``, or ``--target_layers auto`` for a method without
    its own layers)."""
    parts = parse_method_string(method)
    return any(layers == "auto" or (layers is None and target_layers.strip() == "auto") for _, layers in parts)


def check_auto(method: str, target_layers: str, candidates: str, num_layers: int) -> list[int]:
    """The candidate layers of an ``auto`` run; one method only, and one that takes layers: the method's class says
    whether it does (a method that trains the whole backbone, or nothing in the layers, has no layer to choose)."""
    from peftlab.methods import METHODS

    parts = parse_method_string(method)
    if len(parts) != 1:
        raise ConfigError(f"--method {method!r}: auto layer selection takes one method, not a combination.")
    name = parts[0][0]
    if name not in METHODS:
        raise ConfigError(f"Unknown method {name!r}. Valid methods: {', '.join(METHODS)}.")
    if METHODS[name].trains_backbone or not METHODS[name].trains_layers:
        raise ConfigError(f"--method {name} has no layer to choose; auto works for single-layer methods.")
    return parse_layers(candidates, num_layers)


def at_layer(method: str, layer: int) -> str:
    """``method`` with its layers replaced by ``layer``."""
    return f"{parse_method_string(method)[0][0]}@{layer}"


def selection_split(train: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(rest, selection): ``fraction`` of the training set (at most :data:`SELECTION_LIMIT` examples), seeded."""
    size = min(max(1, round(fraction * len(train))), SELECTION_LIMIT, len(train) - 1)
    parts = train.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def keep_predictions(trainer, candidate: Candidate, task) -> None:
    """Have ``candidate`` keep the predictions of each evaluation of ``trainer`` (its last one stays), beside the
    metrics the trainer computes from them as before."""
    from peftlab.glue.metrics import predictions_of

    compute = trainer.compute_metrics

    def keeping(prediction):
        candidate.predictions = (predictions_of(task, prediction), np.asarray(prediction.label_ids))
        return compute(prediction)

    trainer.compute_metrics = keeping


MARGIN_RESAMPLES = 1000


def margin(candidates: list[Candidate], chosen: int, task, metric: str, greater: bool, seed: int) -> dict | None:
    """How far the chosen candidate is ahead of the runner-up (the best other candidate at the last rung the chosen
    one reached, by score then selection loss), in the selection metric, with a paired bootstrap of that difference
    over the selection split's examples (both candidates' predictions on the same resampled examples,
    :data:`MARGIN_RESAMPLES` times, seeded): its 90 % interval, the share of resamples in which the runner-up is
    ahead or level, and whether the interval lies above zero (``separable``). None when no other candidate reached
    that rung; without predictions (a selection metric that is not the task's, such as the loss) the bootstrap is
    left out."""
    from peftlab.glue.metrics import glue_metrics

    by_layer = {c.layer: c for c in candidates if c.evaluations}
    best = by_layer[chosen]
    step, key, sign = best.evaluations[-1]["step"], f"eval_{metric}", 1.0 if greater else -1.0
    rivals = [c for c in by_layer.values() if c.layer != chosen and c.evaluations[-1]["step"] == step]
    if not rivals:
        return None

    runner = max(rivals, key=lambda c: standing(c.evaluations[-1][key], c.evaluations[-1].get("eval_loss"), sign))
    out: dict[str, Any] = {
        "runner_up": runner.layer, "step": step,
        "difference": sign * (best.evaluations[-1][key] - runner.evaluations[-1][key]),
    }  # fmt: skip
    pairs = (best.predictions, runner.predictions)
    if any(p is None for p in pairs) or not np.array_equal(pairs[0][1], pairs[1][1]):
        out["bootstrap"] = "not available: the two candidates' predictions on the same examples are not both kept"
        return out
    if metric not in (*task.metrics, task.main_metric):
        out["bootstrap"] = f"not available: {metric} is not one of the task's metrics, computed from predictions"
        return out
    (ours, labels), (theirs, _) = pairs
    rng = np.random.default_rng(seed)
    diffs = []
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample with one class or a constant prediction: its metric is nan
        for _ in range(MARGIN_RESAMPLES):
            index = rng.integers(0, len(labels), len(labels))
            a = glue_metrics(task, ours[index], labels[index])[metric]
            b = glue_metrics(task, theirs[index], labels[index])[metric]
            diffs.append(sign * (a - b))
    diffs = np.asarray(diffs, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs):
        out["bootstrap"] = "not available: no resample had a finite metric for both candidates"
        return out
    low, high = (float(v) for v in np.percentile(diffs, [5, 95]))
    out.update(
        interval_90=[low, high], share_runner_up_ahead=float(np.mean(diffs <= 0)), resamples=len(diffs),
        separable=low > 0,
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class LayerSearch:
    """What choosing the layer reads: the run's tokenized training set, task, method options (at ``auto``),
    candidate layers, ``--auto_*`` options and training arguments, the seed of the selection split, and the folder
    its scratch files go to (removed at the end)."""

    train: datasets.Dataset
    task: Any
    peft_args: Any
    candidates: list[int]
    options: AutoLayerArguments
    training: Any
    split_seed: int
    output_dir: Path


class CandidateFactory(Protocol):
    """What builds the candidates, so that they train exactly as ordinary runs do."""

    def trainer(self, peft_args, train, evaluation, training_args, callbacks: list):
        """A seeded model with ``peft_args`` and its trainer on ``train``, evaluated on ``evaluation``."""

    def plan_cache(self, pefts: list, data: list) -> None:
        """Announce the frozen-prefix caches the candidates ``pefts`` read on ``data`` (one pass fills them all)."""


def choose_layer(search: LayerSearch, factory: CandidateFactory) -> dict[str, Any]:
    """Choose the layer of ``search``'s method on a selection split; returns the record for ``all_results.json``."""
    rest, selection = selection_split(search.train, search.options.auto_selection_fraction, search.split_seed)
    record, plan = _plan(search, rest, selection)
    candidates = [Candidate(layer) for layer in search.candidates]
    search.output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=search.output_dir))
    started, cpu = time.time(), time.process_time()
    try:
        trainers, states = _candidate_trainers(search, factory, candidates, rest, selection, work, plan, record)
        order = sorted(candidates, key=lambda c: -c.proxy)
        record["setup_cpu_seconds"] = round(time.process_time() - cpu, 2)  # models, trainers, cache fills, proxy
        chosen = order[0].layer
        if plan["halve"]:
            chosen = _halve(search, candidates, order, trainers, states, plan, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["chosen_layer"] = chosen
    record["candidates"] = {
        str(c.layer): {"proxy_gradient_norm": c.proxy, "state": c.state, "steps": c.steps,
                       "evaluations": c.evaluations}
        for c in candidates
    }  # fmt: skip
    record["proxy_choice"] = order[0].layer
    record["selection_seconds"] = round(time.time() - started, 2)
    record["selection_cpu_seconds"] = round(time.process_time() - cpu, 2)
    record["selection_steps"] = sum(c.steps for c in candidates)
    record["selection_cost_in_final_runs"] = round(record["selection_steps"] / max(plan["final_steps"], 1), 3)
    _log_choice(search, record)
    return record


def _plan(search: LayerSearch, rest, selection) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record's settings and the halving's plan: the selection metric (as the run's own best-model selection
    names it), the final run's steps, the rungs, and whether to halve and to warm the head."""
    args, training = search.options, search.training
    metric = (training.metric_for_best_model or search.task.main_metric).removeprefix("eval_")
    greater = training.greater_is_better if training.greater_is_better is not None else not metric.endswith("loss")
    steps_per_epoch = math.ceil(
        len(search.train) / (training.per_device_train_batch_size * training.gradient_accumulation_steps)
    )
    final_steps = (
        training.max_steps if training.max_steps > 0 else math.ceil(training.num_train_epochs * steps_per_epoch)
    )
    rungs = rung_steps(len(search.candidates), round(args.auto_budget * final_steps))
    most = rungs[-1] if rungs else 0
    record: dict[str, Any] = {
        "options": dataclasses.asdict(args),  # every --auto_* setting the choice was made with, defaults included
        "strategy": args.auto_layer_strategy, "metric": f"eval_{metric}", "greater_is_better": greater,
        "ties": "broken by the lower eval_loss on the selection split, then by the proxy's order",
        "selection_split": f"{len(selection)} examples held out of the {len(search.train)} training examples "
                           f"(seed {search.split_seed}); candidates trained on the other {len(rest)}",
        "budget": {"final_run_steps": final_steps, "auto_budget": args.auto_budget, "rungs": rungs,
                   "most_steps_per_candidate": most, "rung_steps": rungs[0] if rungs else 0},
    }  # fmt: skip
    several = len(search.candidates) > 1
    plan = {"metric": metric, "greater": greater, "final_steps": final_steps, "rungs": rungs, "most": most,
            "halve": args.auto_layer_strategy == "halving" and several, "warm": args.auto_warm_head and several}  # fmt: skip
    return record, plan


def _candidate_trainers(search, factory, candidates, rest, selection, work, plan, record) -> tuple[dict, dict]:
    """Each candidate's trainer (from the warm probe's head, where it is warmed), the random state its training
    starts from, and its zero-training proxy."""
    training = search.training
    pefts = {c.layer: dataclasses.replace(search.peft_args, method=at_layer(search.peft_args.method, c.layer))
             for c in candidates}  # fmt: skip
    # the warm head's probe trains no layer: "all" (the default), not the run's "auto" (--target_layers auto)
    probe_peft = dataclasses.replace(search.peft_args, method="probe", target_layers="all")
    factory.plan_cache(list(pefts.values()) + ([probe_peft] if plan["warm"] else []), [rest, selection])
    trainers, states, head = {}, {}, None
    if plan["warm"]:
        probe_args = training.__class__(**_copy(training, work, plan["final_steps"]))
        head, record["warm_head"] = probe_head(factory.trainer(probe_peft, rest, selection, probe_args, []))
    for candidate in candidates:
        candidate_args = training.__class__(**_copy(training, work, plan["most"] if plan["halve"] else 0))
        trainers[candidate.layer] = factory.trainer(pefts[candidate.layer], rest, selection, candidate_args, [])
        keep_predictions(trainers[candidate.layer], candidate, search.task)
        if head is not None:
            trainers[candidate.layer].model.head.load_state_dict(head)
        states[candidate.layer] = rng_state()  # where its training starts, as if it were built and trained alone
        candidate.proxy = gradient_norm(trainers[candidate.layer])
    return trainers, states


def _halve(
    search: LayerSearch, candidates: list[Candidate], order: list[Candidate], trainers: dict, states: dict, plan, record
) -> int:
    """Successive halving of ``candidates`` in the proxy's ``order``; the chosen layer (its margin into ``record``)."""
    import optuna

    study = optuna.create_study(direction="maximize" if plan["greater"] else "minimize",
                                pruner=SynchronousHalving(plan["rungs"]))  # fmt: skip

    def train(candidate: Candidate, callback: TrainerCallback) -> int:
        trainer = trainers.pop(candidate.layer)
        trainer.add_callback(callback)
        trainer.train()
        return trainer.state.global_step

    try:
        halving(study, order, plan["metric"], train, states)
    finally:
        trainers.clear()
    chosen = best_layer(study)
    record["margin"] = margin(candidates, chosen, search.task, plan["metric"], plan["greater"], search.training.seed)
    return chosen


def _log_choice(search: LayerSearch, record: dict[str, Any]) -> None:
    chosen, metric = record["chosen_layer"], record["metric"].removeprefix("eval_")
    logger.info("Auto layer: chose layer %d (%s); candidates %s", chosen, search.options.auto_layer_strategy,
                record["candidates"])  # fmt: skip
    close = record.get("margin") or {}
    if close.get("separable") is False:
        low, high = close["interval_90"]
        logger.warning(
            "Auto layer: layer %d was chosen over layer %d (%s %+.4f on the selection split), but the 90 %% "
            "bootstrap interval of that difference, [%+.4f, %+.4f], reaches zero: the selection split does not "
            "tell the two apart, and either may be the better layer.",
            chosen, close["runner_up"], metric, close["difference"], low, high,
        )  # fmt: skip


def probe_head(trainer) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train ``trainer`` (a linear probe: only the head trains) and return its head's weights and its evaluation on
    the selection split, with its step count."""
    trainer.train()
    metrics = trainer.evaluate()
    head = {k: v.detach().clone() for k, v in trainer.model.head.state_dict().items()}
    return head, {
        "steps": trainer.state.global_step,
        **{k: v for k, v in metrics.items() if "runtime" not in k and "per_second" not in k},
    }


def _copy(training, work: Path, steps: int) -> dict[str, Any]:
    """The run's training arguments for one candidate: ``steps`` steps, evaluated only where a callback asks (the
    rungs), no best-model selection, no early stopping, nothing saved (a scratch folder)."""
    values = {f.name: getattr(training, f.name) for f in dataclasses.fields(training) if f.init}
    values.update(
        output_dir=str(work), overwrite_output_dir=True, max_steps=max(steps, 1), save_strategy="no",
        load_best_model_at_end=False, early_stopping_patience=None, eval_strategy="no",
        eval_steps=None, logging_steps=50, report_to=[], save_model=False, resumable=False,
        evaluation_strategy=None, warmup_ratio=None,
    )  # fmt: skip
    return values


def gradient_norm(trainer, batches: int = 4) -> float:
    """Mean norm, over ``batches`` training batches, of the loss gradient wrt the parameters that train (the
    method's and the head's; the head's part is the same at every layer, so the ranking is the method's)."""
    model = trainer.model
    model.train()
    norms = []
    for index, batch in enumerate(trainer.get_train_dataloader()):
        if index == batches:
            break
        batch = trainer._prepare_inputs(batch)
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        grads = [
            p.grad.norm() ** 2 for n, p in model.named_parameters() if p.grad is not None and not n.startswith("head.")
        ]
        norms.append(float(torch.stack(grads).sum().sqrt()) if grads else 0.0)
    model.zero_grad(set_to_none=True)
    return sum(norms) / max(len(norms), 1)
