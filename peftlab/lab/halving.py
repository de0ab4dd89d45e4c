"""Successive halving of candidate layers through Optuna, with complete rungs: every live candidate reaches a
rung before any is judged there (:class:`SynchronousHalving`). Optuna's own ``SuccessiveHalvingPruner`` is
asynchronous (a trial is judged against the trials that happened to reach the rung before it), which with trials
run one after another lets the first trial through unopposed. The candidates are trainers in threads that take
turns (:class:`Turns`): one trains at a time, up to its next rung, reports and hands over, so one core does the
work of one run at a time; each keeps its own random state across turns, so a candidate trains exactly as it
would alone. Used by :mod:`peftlab.lab.autolayer`."""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import TrainerCallback


@dataclass
class Candidate:
    layer: int
    proxy: float = math.nan
    evaluations: list[dict[str, float]] = field(default_factory=list)  # every metric of each rung's evaluation
    state: str = "not run"
    steps: int = 0
    # (predictions, labels) of its last evaluation on the selection split, for the bootstrap of the choice's margin
    predictions: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


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


def rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def set_rng_state(state: tuple) -> None:
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
            set_rng_state(self._states[name])

    def hand_over(self, name, leave: bool = False) -> None:
        self._states[name] = rng_state()
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
