"""``--target_layers auto``: choose the one layer a single-layer method goes to, then train it there.

The paper's central finding is that one small module at the right layer does most of the work, and that the
right layer matters. Finding it by a full layer sweep costs one run per layer and reads the winner off the dev set
it then reports. Here the choice is made on a *selection split* carved from the training set (never the dev
set), by successive halving over the candidate layers, run through Optuna: each candidate layer is a trial (the
layer a categorical parameter, one enqueued trial per layer), trained on the rest of the training set and
evaluated on the selection split at rungs of ``r``, ``2r``, ``4r``... steps, where :class:`SynchronousHalving`
(an Optuna pruner) keeps the better half of the trials and prunes the rest (equal scores told apart by the
selection loss); the last one left is the choice. The
chosen configuration is then trained on the whole training set and evaluated on dev as usual.

The rungs are complete: every live candidate reaches a rung before any is judged there. Optuna's own
``SuccessiveHalvingPruner`` is asynchronous (a trial is judged against the trials that happened to reach the
rung before it), which with trials run one after another lets the first trial through unopposed, and late ones
too: on CoLA two of LoRA's six candidates trained the whole budget, and the selection 1.46 final runs' steps. Here the
candidates are trainers in threads that take turns (:class:`Turns`): one trains at a time, up to its next rung,
reports and hands over, so one core does the work of one run at a time; each keeps its own random state across
turns, so a candidate trains exactly as it would alone.

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
comparison only: a better layer cut at an earlier rung does not show in it (``docs/results.md`` Part C: in 18 runs of
the check, 13 final choices were not told apart, and told-apart choices were no more often the best layer's).

Warm head (``--auto_warm_head``, the default since 5 December 2026; ``--auto_warm_head false`` gives every candidate a
new head, as before): every candidate starts from the head of a linear probe, trained first on the
frozen backbone for the final run's steps (with the cache, on cached features: cheap). A new head's first steps
learn what every candidate learns alike (the class prior, the probe's features), and at short rungs that is most
of what a candidate's score shows; from the probe's head on, a rung's score shows what the module adds at its layer.
The proxy is measured at the same head (with either strategy): the gradient a zero-initialised module receives
beside a trained probe is what the loss wants from that layer beyond the probe, where beside a new head it is
mostly the head's own error. The final training starts from a new head as usual, so it is the fixed-layer run at
the chosen layer. Why it is the default: in both checks of ``docs/results.md`` (Part C) the warm halving came within
one seed std of the best layer in more task-method cells than the cold one (whole training sets: 7 of 10 against 5;
1,000 examples: 5 of 10 against 3), at about the same cost.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import TrainerCallback

from peftlab.architectures import parse_layers
from peftlab.errors import ConfigError
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
    evaluations: list[dict[str, float]] = field(default_factory=list)  # every metric of each rung's evaluation
    state: str = "not run"
    steps: int = 0
    # (predictions, labels) of its last evaluation on the selection split, for the bootstrap of the choice's margin
    predictions: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


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


def rung_steps(candidates: int, budget_steps: int, factor: int = 2) -> list[int]:
    """The rungs (steps at which the live candidates are judged) of a successive halving of ``candidates`` that
    trains about ``budget_steps`` steps in all: ``r, factor r, factor^2 r, ...`` until one candidate is left."""
    rungs, units, live, length = [], 0, candidates, 1
    while live > 1:
        units += live * (length - (rungs[-1] if rungs else 0))
        rungs.append(length)
        live, length = max(1, live // factor), length * factor
    r = max(1, budget_steps // max(units, 1))
    return [r * rung for rung in rungs]


def standing(value: float, loss: float | None, sign: float) -> tuple[float, float]:
    """How good an evaluation is, larger better: its value times ``sign`` (-1 when lower is better), then its
    selection loss, lower better (a missing or non-finite loss ranks last)."""
    return sign * value, -loss if loss is not None and math.isfinite(loss) else -math.inf


def rank(study, trial, step: int) -> tuple[float, float]:
    """The :func:`standing` of ``trial``'s evaluation at ``step`` (its value negated when the study minimises)."""
    import optuna

    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return standing(trial.intermediate_values[step], trial.user_attrs.get(f"loss@{step}"), sign)


def best_layer(study) -> int:
    """The layer of the best trial that completed the halving, by :func:`rank` at its last evaluation (several
    complete only when they tie at the last rung; then the first in turn order, the proxy's, wins)."""
    import optuna

    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(finished, key=lambda t: rank(study, t, t.last_step)).params["layer"]


class SynchronousHalving:
    """An Optuna pruner: at a rung (a step every live trial reports before any is judged), a trial goes on if its
    value is among the best ``n // factor`` of the ``n`` trials that reported that step. Equal values are told
    apart by the selection loss of the same evaluation, lower first (a trial's user attribute ``loss@<step>``):
    discrete scores tie often (an accuracy on a few hundred examples; a Matthews correlation of 0 for every
    candidate that still predicts one class). Trials equal in both go on together."""

    def __init__(self, rungs: list[int], factor: int = 2) -> None:
        self.rungs, self.factor = set(rungs), factor

    def kept(self, study, step: int) -> list[int]:
        """Numbers of the trials that go on from the rung at ``step``."""
        scores = {
            t.number: rank(study, t, step) for t in study.get_trials(deepcopy=False) if step in t.intermediate_values
        }
        keep = max(1, len(scores) // self.factor)
        bar = sorted(scores.values(), reverse=True)[keep - 1]
        return [number for number, score in scores.items() if score >= bar]

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        return step in self.rungs and trial.number not in self.kept(study, step)


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def _set_rng_state(state: tuple) -> None:
    cpu, cuda, python, numpy = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(python)
    np.random.set_state(numpy)


class Stopped(Exception):
    """Raised in a waiting candidate when another one failed."""


class Turns:
    """Work in threads that take turns, one running at a time, in a ring: a thread runs until it hands over, then
    waits for its next turn, which comes after every other live thread has had one. Each keeps its own random
    state (torch, CUDA, Python, NumPy) across turns, so what it computes is what it would compute alone."""

    def __init__(self, names: list, states: dict | None = None) -> None:
        self.live = list(names)
        self._turn = self.live[0] if self.live else None
        self._cond = threading.Condition()
        self._states: dict = dict(states or {})
        self.failed = False

    def take(self, name) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._turn == name or self.failed)
            if self.failed:
                raise Stopped
        if name in self._states:
            _set_rng_state(self._states[name])

    def hand_over(self, name, leave: bool = False) -> None:
        self._states[name] = _rng_state()
        with self._cond:
            index = self.live.index(name)
            ring = self.live[index + 1 :] + self.live[: index + (0 if leave else 1)]
            if leave:
                self.live.remove(name)
            self._turn = ring[0] if ring else None
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self.failed = True
            self._cond.notify_all()


class _Rungs(TrainerCallback):
    """A candidate's training: evaluation on the selection split at each rung, reported to its trial; then the
    other candidates' turns; then the pruner's verdict (stop if pruned, or if it is the last one left)."""

    def __init__(self, study, trial, turns: Turns, metric: str, candidate: Candidate):
        self.study, self.trial, self.turns, self.metric, self.candidate = study, trial, turns, metric, candidate
        self.pruner: SynchronousHalving = study.pruner

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.pruner.rungs:
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = float(metrics[f"eval_{self.metric}"])
        scores = {k: float(v) for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        self.candidate.evaluations.append({"step": state.global_step, **scores})
        self.trial.set_user_attr(f"loss@{state.global_step}", scores.get("eval_loss"))  # the pruner's tie-break
        self.trial.report(value, state.global_step)
        self.turns.hand_over(self.candidate.layer)
        self.turns.take(self.candidate.layer)  # every live candidate has reported this rung now
        if self.trial.should_prune():
            self.candidate.state = "pruned"
            control.should_training_stop = True
        elif self.pruner.kept(self.study, state.global_step) == [self.trial.number]:
            control.should_training_stop = True  # the last one left: the choice


def halving(study, candidates: list[Candidate], metric: str, train, states: dict | None = None) -> None:
    """Successive halving of ``candidates`` (in turn order) through ``study``, whose pruner is a
    :class:`SynchronousHalving`: ``train(candidate, callback)`` trains one candidate (at most the last rung's steps)
    with the callback and returns its step count; ``metric`` is the selection score; ``states`` the random state
    each candidate's training starts from (by layer; default: whatever it finds)."""
    import optuna

    layers = [c.layer for c in candidates]
    for layer in layers:
        study.enqueue_trial({"layer": layer})
    trials = {}
    for candidate in candidates:
        trials[candidate.layer] = study.ask()
        assert trials[candidate.layer].suggest_categorical("layer", layers) == candidate.layer
    turns, errors = Turns(layers, states), []

    def work(candidate: Candidate) -> None:
        trial = trials[candidate.layer]
        try:
            turns.take(candidate.layer)
            callback = _Rungs(study, trial, turns, metric, candidate)
            candidate.steps = train(candidate, callback)
            if candidate.state == "pruned":
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                candidate.state = "complete"
                study.tell(trial, candidate.evaluations[-1][f"eval_{metric}"])
        except Stopped:
            return
        except BaseException as error:  # handed to the caller's thread below
            errors.append(error)
            turns.fail()
            return
        turns.hand_over(candidate.layer, leave=True)

    threads = [threading.Thread(target=work, args=(c,), daemon=True, name=f"auto-layer-{c.layer}") for c in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


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
    # the selection metric, as the run's own best-model selection names it ("main" was resolved in run.prepare)
    metric = (training.metric_for_best_model or spec.task.main_metric).removeprefix("eval_")
    greater = training.greater_is_better if training.greater_is_better is not None else not metric.endswith("loss")
    steps_per_epoch = math.ceil(
        len(features.train) / (training.per_device_train_batch_size * training.gradient_accumulation_steps)
    )
    final_steps = (
        training.max_steps if training.max_steps > 0 else math.ceil(training.num_train_epochs * steps_per_epoch)
    )
    rungs = rung_steps(len(candidates), round(args.auto_budget * final_steps))
    most = rungs[-1] if rungs else 0
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=spec.output_dir))
    started = time.time()
    record: dict[str, Any] = {
        "options": dataclasses.asdict(args),  # every --auto_* setting the choice was made with, defaults included
        "strategy": args.auto_layer_strategy, "metric": f"eval_{metric}", "greater_is_better": greater,
        "ties": "broken by the lower eval_loss on the selection split, then by the proxy's order",
        "selection_split": f"{len(selection)} examples held out of the {len(features.train)} training examples "
                           f"(seed {spec.data_args.split_seed}); candidates trained on the other {len(rest)}",
        "budget": {"final_run_steps": final_steps, "auto_budget": args.auto_budget, "rungs": rungs,
                   "most_steps_per_candidate": most, "rung_steps": rungs[0] if rungs else 0},
    }  # fmt: skip
    pefts = {
        c.layer: dataclasses.replace(spec.peft_args, method=at_layer(spec.peft_args.method, c.layer))
        for c in candidates
    }
    halve = args.auto_layer_strategy == "halving" and len(candidates) > 1
    warm = args.auto_warm_head and len(candidates) > 1  # the head both strategies judge from (halving and proxy)
    # the warm head's probe trains no layer: "all" (the default), not the run's "auto" (--target_layers auto)
    probe_peft = dataclasses.replace(spec.peft_args, method="probe", target_layers="all")
    plan_cache(list(pefts.values()) + ([probe_peft] if warm else []), [rest, selection])
    trainers, states, cpu = {}, {}, time.process_time()
    head = None
    try:
        if warm:
            probe_args = training.__class__(**_copy(training, work, final_steps))
            head, record["warm_head"] = probe_head(build_trainer(probe_peft, rest, selection, probe_args, []))
        for candidate in candidates:  # each candidate's trainer, and the zero-training proxy
            candidate_args = training.__class__(**_copy(training, work, most if halve else 0))
            trainers[candidate.layer] = build_trainer(pefts[candidate.layer], rest, selection, candidate_args, [])
            keep_predictions(trainers[candidate.layer], candidate, spec.task)
            if head is not None:
                trainers[candidate.layer].model.head.load_state_dict(head)
            states[candidate.layer] = _rng_state()  # where its training starts, as if it were built and trained alone
            candidate.proxy = gradient_norm(trainers[candidate.layer])
        order = sorted(candidates, key=lambda c: -c.proxy)
        record["setup_cpu_seconds"] = round(time.process_time() - cpu, 2)  # models, trainers, cache fills, proxy
        if halve:
            direction = "maximize" if greater else "minimize"
            study = optuna.create_study(direction=direction, pruner=SynchronousHalving(rungs))

            def train(candidate: Candidate, callback: TrainerCallback) -> int:
                trainer = trainers.pop(candidate.layer)
                trainer.add_callback(callback)
                trainer.train()
                return trainer.state.global_step

            halving(study, order, metric, train, states)
            chosen = best_layer(study)
            record["margin"] = margin(candidates, chosen, spec.task, metric, greater, training.seed)
        else:
            chosen = order[0].layer
    finally:
        trainers.clear()
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
    record["selection_cost_in_final_runs"] = round(record["selection_steps"] / max(final_steps, 1), 3)
    logger.info(
        "Auto layer: chose layer %d (%s); candidates %s", chosen, args.auto_layer_strategy, record["candidates"]
    )
    close = record.get("margin") or {}
    if close.get("separable") is False:
        low, high = close["interval_90"]
        logger.warning(
            "Auto layer: layer %d was chosen over layer %d (%s %+.4f on the selection split), but the 90 %% "
            "bootstrap interval of that difference, [%+.4f, %+.4f], reaches zero: the selection split does not "
            "tell the two apart, and either may be the better layer.",
            chosen, close["runner_up"], metric, close["difference"], low, high,
        )  # fmt: skip
    return record


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
