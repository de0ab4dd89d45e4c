"""``--target_layers auto``: choose the one layer a single-layer method goes to, then train it there.

The paper's central finding is that one small module at the right layer does most of the work, and that the
right layer matters. Finding it by a full layer sweep costs one run per layer and reads the winner off the dev set
it then reports. Here the choice is made on a *selection split* carved from the training set (never the dev
set), by successive halving over the candidate layers, run through Optuna: each candidate layer is a trial (the
layer a categorical parameter, one enqueued trial per layer), trained on the rest of the training set and
evaluated on the selection split every ``r`` steps; Optuna's ``SuccessiveHalvingPruner`` (reduction factor 2)
stops a trial at the first rung (``r``, ``2r``, ``4r``... steps) where it is not in the better half of the trials
that reached that rung. Trials run one after another, best-first by a zero-training proxy (below), so the likely
winner sets the bar early and the others are stopped after few steps. The chosen configuration is then trained
on the whole training set and evaluated on dev as usual.

Cost. A trial trains at most ``R`` steps, ``R`` a third of the final run's steps (``--auto_budget``), with
``r = R / 8``; the selection split is at most 1,000 examples. The first trial runs ``R`` steps; a trial that is
worse than the best half at the first rung costs ``r``. With the frozen-prefix cache, every candidate reads the
cached input of its own layer (the fills of all candidate layers are one pass over the selection data), so a
layer-k candidate computes only layers k and up.

Proxy (``--auto_layer_strategy proxy`` uses it alone): the norm of the loss gradient that the method's
parameters receive at initialisation, averaged over a few batches of the selection training data, per layer;
for a zero-initialised module it measures how much the loss wants that layer to change. Its ranking is recorded
beside the halving's in every run, so how often the two agree can be counted (``scripts/auto_layer_check.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import TrainerCallback, set_seed

from peftlab.architectures import parse_layers
from peftlab.errors import ConfigError
from peftlab.methods.base import parse_method_string

logger = logging.getLogger("peftlab")

SELECTION_LIMIT = 1000
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
        default=1 / 3,
        metadata={"help": "Most steps a candidate trains, as a share of the final run's steps."},
    )

    def __post_init__(self) -> None:
        if self.auto_layer_strategy not in STRATEGIES:
            raise ConfigError(
                f"--auto_layer_strategy {self.auto_layer_strategy!r} is not valid; choose one of {', '.join(STRATEGIES)}."
            )
        if not 0.0 < self.auto_selection_fraction < 1.0:
            raise ConfigError(f"--auto_selection_fraction {self.auto_selection_fraction} must be in (0, 1).")
        if not 0.0 < self.auto_budget <= 1.0:
            raise ConfigError(f"--auto_budget {self.auto_budget} must be in (0, 1].")


def wants_auto(method: str, target_layers: str) -> bool:
    """Whether the run asks for an automatic layer (``@auto``, or ``--target_layers auto`` for a method without
    its own layers)."""
    parts = parse_method_string(method)
    return any(layers == "auto" or (layers is None and target_layers.strip() == "auto") for _, layers in parts)


def check_auto(method: str, target_layers: str, candidates: str, num_layers: int) -> list[int]:
    """The candidate layers of an ``auto`` run; one method only, and one that takes layers."""
    parts = parse_method_string(method)
    if len(parts) != 1:
        raise ConfigError(f"--method {method!r}: auto layer selection takes one method, not a combination.")
    if parts[0][0] in ("full", "probe"):
        raise ConfigError(f"--method {parts[0][0]} has no layer to choose; auto works for single-layer methods.")
    return parse_layers(candidates, num_layers)


def at_layer(method: str, layer: int) -> str:
    """``method`` with its layers replaced by ``layer``."""
    return f"{parse_method_string(method)[0][0]}@{layer}"


def selection_split(train: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(rest, selection): ``fraction`` of the training set (at most :data:`SELECTION_LIMIT` examples), seeded."""
    size = min(max(1, round(fraction * len(train))), SELECTION_LIMIT, len(train) - 1)
    parts = train.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


@dataclass
class Candidate:
    layer: int
    proxy: float = math.nan
    reports: list[tuple[int, float]] = field(default_factory=list)
    state: str = "not run"
    steps: int = 0


class _ReportToTrial(TrainerCallback):
    """Reports each evaluation on the selection split to the Optuna trial; stops training when it is pruned."""

    def __init__(self, trial, metric: str, candidate: Candidate) -> None:
        self.trial, self.metric, self.candidate = trial, metric, candidate

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = float(metrics[f"eval_{self.metric}"])
        self.candidate.reports.append((state.global_step, value))
        self.trial.report(value, state.global_step)
        if self.trial.should_prune():
            self.candidate.state = "pruned"
            control.should_training_stop = True


def choose_layer(ws, spec, build_trainer, plan_cache) -> dict[str, Any]:
    """Choose the layer of ``spec``'s method on a selection split; returns the record for ``all_results.json``.

    ``build_trainer(peft_args, train, eval, training_args, callbacks)`` builds a seeded model and its trainer
    (from :mod:`peftlab.run`, so that candidates are trained exactly as ordinary runs are);
    ``plan_cache(peft_args_list, datasets)`` announces the frozen-prefix caches they will read, so that one pass per
    dataset fills the inputs of every candidate layer."""
    import optuna

    args, training = spec.auto_args, spec.training_args
    features = ws.features(spec)
    rest, selection = selection_split(features.train, args.auto_selection_fraction, spec.data_args.split_seed)
    candidates = [Candidate(layer) for layer in spec.auto_candidates]
    metric = training.metric_for_best_model or spec.task.main_metric
    if metric == "main":
        metric = spec.task.main_metric
    steps_per_epoch = math.ceil(
        len(features.train) / (training.per_device_train_batch_size * training.gradient_accumulation_steps)
    )
    final_steps = (
        training.max_steps if training.max_steps > 0 else math.ceil(training.num_train_epochs * steps_per_epoch)
    )
    most = max(8, round(args.auto_budget * final_steps))
    rung = max(1, most // 8)
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="auto_layer_", dir=spec.output_dir))
    started = time.time()
    record: dict[str, Any] = {
        "strategy": args.auto_layer_strategy, "metric": f"eval_{metric}",
        "selection_split": f"{len(selection)} examples held out of the {len(features.train)} training examples "
                           f"(seed {spec.data_args.split_seed}); candidates trained on the other {len(rest)}",
        "budget": {"final_run_steps": final_steps, "most_steps_per_candidate": most, "rung_steps": rung},
    }  # fmt: skip
    pefts = {
        c.layer: dataclasses.replace(spec.peft_args, method=at_layer(spec.peft_args.method, c.layer))
        for c in candidates
    }
    plan_cache(list(pefts.values()), [rest, selection])
    try:
        for candidate in candidates:  # the zero-training proxy, for every candidate
            trainer = build_trainer(
                pefts[candidate.layer], rest, selection, training.__class__(**_copy(training, work, 0)), []
            )
            candidate.proxy = gradient_norm(trainer)
        order = sorted(candidates, key=lambda c: -c.proxy)
        if args.auto_layer_strategy == "halving":
            study = optuna.create_study(
                direction="maximize", sampler=optuna.samplers.GridSampler({"layer": [c.layer for c in order]}),
                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=rung, reduction_factor=2),
            )  # fmt: skip
            for candidate in order:
                study.enqueue_trial({"layer": candidate.layer})
            for candidate in order:
                trial = study.ask()
                assert trial.suggest_categorical("layer", [c.layer for c in order]) == candidate.layer
                candidate_args = training.__class__(**_copy(training, work, most, eval_steps=rung))
                report = _ReportToTrial(trial, metric, candidate)
                trainer = build_trainer(pefts[candidate.layer], rest, selection, candidate_args, [report])
                trainer.train()
                candidate.steps = trainer.state.global_step
                if candidate.state == "pruned":
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    candidate.state = "complete"
                    study.tell(trial, candidate.reports[-1][1])
            chosen = study.best_trial.params["layer"]
        else:
            chosen = order[0].layer
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["chosen_layer"] = chosen
    record["candidates"] = {
        str(c.layer): {"proxy_gradient_norm": c.proxy, "state": c.state, "steps": c.steps,
                       "evaluations": [{"step": s, f"eval_{metric}": v} for s, v in c.reports]}
        for c in candidates
    }  # fmt: skip
    record["proxy_choice"] = order[0].layer
    record["selection_seconds"] = round(time.time() - started, 2)
    record["selection_steps"] = sum(c.steps for c in candidates)
    record["selection_cost_in_final_runs"] = round(record["selection_steps"] / max(final_steps, 1), 3)
    logger.info(
        "Auto layer: chose layer %d (%s); candidates %s", chosen, args.auto_layer_strategy, record["candidates"]
    )
    return record


def _copy(training, work: Path, steps: int, eval_steps: int | None = None) -> dict[str, Any]:
    """The run's training arguments for one candidate: ``steps`` steps, evaluated every ``eval_steps``, no best-model
    selection, no early stopping, nothing saved (a scratch folder)."""
    values = {f.name: getattr(training, f.name) for f in dataclasses.fields(training) if f.init}
    values.update(
        output_dir=str(work), overwrite_output_dir=True, max_steps=max(steps, 1), save_strategy="no",
        load_best_model_at_end=False, early_stopping_patience=None, eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps, logging_steps=max(eval_steps or 50, 1), report_to=[], save_model=False,
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
    set_seed(trainer.args.seed)
    return sum(norms) / max(len(norms), 1)
