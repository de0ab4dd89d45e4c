"""Named training protocols: ``--protocol paper`` or ``--protocol quick`` fills in every setting of a run that the
protocol fixes, for the run's task and method; every value given explicitly (flag or JSON key) overrides it.

- ``paper``: the paper's own protocol and module configurations, as its public code sets them
  (github.com/PKU-TANGENT/Efficiency; every value is cited file by file in ``docs/paper_protocol.md``). The
  per-method values live on each method's class (``paper_learning_rate``, ``paper_options``, and ``paper_ours``
  naming those that are this project's choice, as for the methods the paper does not have: ia3, vera).
- ``quick``: this project's faster protocol (3 epochs, batch 32, the last epoch's score, one learning rate for
  every frozen-backbone method), used for the first Table 1 in ``docs/results.md``. Not the paper's.

Layers are not part of a protocol: the method string carries them (``adapter@2``), and the sweep files scale the
paper's layers of a 12-layer model to the 6-layer bundled one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from peftlab.errors import ConfigError


@dataclass
class ProtocolArguments:
    """Which preset fills in the settings not given explicitly."""

    protocol: str | None = field(
        default=None,
        metadata={
            "help": "Preset of training settings for the run's task and method: paper (the paper's code: "
            "docs/paper_protocol.md) or quick (3 epochs, batch 32, last epoch). Explicit flags override it."
        },
    )
    applied: dict[str, Any] = field(default_factory=dict, init=False)
    """The values the preset filled in (those given explicitly are not among them)."""
    not_applied: dict[str, str] = field(default_factory=dict, init=False)
    """The preset's values that the user's own ruled out (an alias or an option they would override), and why."""

    def __post_init__(self) -> None:
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol {self.protocol!r} is not valid; choose one of {', '.join(PROTOCOLS)}.")


QUICK_LEARNING_RATE = {True: 5e-5, False: 2e-3}
"""``--protocol quick``'s rule, by whether the method trains the backbone (``Method.trains_backbone``): full
fine-tuning at 5e-5, every frozen-backbone method (module and head) at 2e-3."""


def method_class(name: str) -> type:
    """The registered class of the method named ``name``: the protocols read their per-method values from it."""
    methods = _methods()
    if name not in methods:
        raise ConfigError(f"Unknown method {name!r}. Valid methods: {', '.join(methods)}.")
    return methods[name]


def quick(task: str | None, method: str) -> dict[str, Any]:
    """3 epochs, batch 32, warm-up 0.06, weight decay 0.1, lr 5e-5 for full fine-tuning and 2e-3 (module and head)
    for every frozen-backbone method; the last epoch's model is scored."""
    lr = QUICK_LEARNING_RATE[method_class(method).trains_backbone]
    return {
        "num_train_epochs": 3, "per_device_train_batch_size": 32, "warmup_ratio": 0.06, "weight_decay": 0.1,
        "max_seq_length": 128, "learning_rate": lr, "head_learning_rate": lr,
    }  # fmt: skip


PAPER_SELECTION_METRIC = {"cola": "matthews_correlation", "stsb": "spearmanr"}
"""The dev metric whose best epoch is kept (run_glue.py:67-77,406 there); accuracy for every other task."""


def paper(task: str | None, method: str) -> dict[str, Any]:
    """The paper's scripts: best epoch of 10 (MRPC 5) with early stopping, batch 16, per-method learning rates and
    module sizes, mean pooling and an MLP head; full fine-tuning 3 epochs at 2e-5 with CLS pooling (the default
    of finetune_glue.sh's model class). Each method's learning rate and module options are its class's
    ``paper_learning_rate`` and ``paper_options`` (the file and line of the paper's code beside each value, the
    project's own choices named in ``paper_ours``); a method without them is refused."""
    cls = method_class(method)
    if cls.paper_learning_rate is None:
        with_preset = [name for name, c in _methods().items() if c.paper_learning_rate is not None]
        raise ConfigError(
            f"--protocol paper has no preset for --method {method!r} (its class sets no paper_learning_rate); "
            f"methods with one: {', '.join(with_preset)}."
        )
    lr = cls.paper_learning_rate
    values: dict[str, Any] = {
        "per_device_train_batch_size": 16, "per_device_eval_batch_size": 8, "warmup_ratio": 0.06,
        "weight_decay": 0.1, "max_seq_length": 128, "eval_strategy": "epoch", "load_best_model_at_end": True,
        "metric_for_best_model": PAPER_SELECTION_METRIC.get(task or "", "accuracy"), "greater_is_better": True,
        "learning_rate": lr, "head_learning_rate": lr, "pooling": "mean", "head": "mlp",
    }  # fmt: skip
    if task is None:  # the user's own data: select on the task's main metric
        values["metric_for_best_model"] = "main"
    if cls.trains_backbone:
        values.update({"num_train_epochs": 3, "early_stopping_patience": 10, "pooling": "cls"})
    else:
        values.update({"num_train_epochs": 5 if task == "mrpc" else 10, "early_stopping_patience": 5})
    values.update(cls.paper_options)
    return values


def _methods() -> dict[str, type]:
    """The registry (imported here, not at the top: a sweep expands its runs without loading torch unless one of
    them names a protocol)."""
    from peftlab.methods import METHODS

    return METHODS


def paper_method_options() -> dict[str, dict[str, Any]]:
    """Each method's paper module options (:attr:`~peftlab.methods.Method.paper_options`), by name, for scripts
    that read them as a table; the methods without any are left out."""
    return {n: dict(c.paper_options) for n, c in _methods().items() if c.paper_options}


PROTOCOLS = {"paper": paper, "quick": quick}


def preset(protocol: str, task: str | None, method: str) -> dict[str, Any]:
    """The values ``protocol`` gives a run of ``task`` with ``method`` (a method string; its first method's name
    decides the learning rate and module options)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r} is not valid; choose one of {', '.join(PROTOCOLS)}.")
    name = method.split("+")[0].split("@")[0].strip()
    return PROTOCOLS[protocol](task, name)


def given_values(argv: list[str]) -> dict[str, Any]:
    """The flags of a command line and their values as typed (``True`` for a flag given without one)."""
    given: dict[str, Any] = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, _, value = arg[2:].partition("=")
        if not value:
            following = argv[i + 1] if i + 1 < len(argv) else None
            value = True if following is None or following.startswith("--") else following
        given[name] = value
    return given


def as_flags(values: dict[str, Any]) -> list[str]:
    """Command-line flags for ``values`` (booleans spelt out: some flags require a value)."""
    return [part for key, value in values.items() if value is not None for part in (f"--{key}", str(value))]


def says(value: Any, *words: str) -> bool:
    """Whether a value as the user typed it is one of ``words`` (case and spaces aside): ``says(v, "false", "0")``."""
    return str(value).strip().lower() in words


def not_applied(preset_values: dict[str, Any], given: dict[str, Any]) -> dict[str, str]:
    """The preset's values that the user's own ones rule out, each with the reason: a preset fills only what the
    user did not set, directly (the same name), through an alias (``--warmup_steps`` for the preset's
    ``warmup_ratio``, ``--evaluation_strategy`` for ``eval_strategy``), or through an option it would override
    (``--learning_rate``, which the head's rate defaults to; ``--eval_strategy no`` or ``--load_best_model_at_end
    false``, which the preset's best-epoch selection and early stopping would turn back on)."""
    from peftlab.lab.args import ALIAS_OF

    reasons: dict[str, str] = {}
    for key in preset_values:
        if key in given:
            reasons[key] = f"--{key} is given"
            continue
        for alias, target in ALIAS_OF.items():
            other = {alias: target, target: alias}.get(key)
            if other in given and key in (alias, target):
                reasons[key] = f"--{other} is given (it sets the same thing as --{key})"
    if "head_learning_rate" in preset_values and "learning_rate" in given and "head_learning_rate" not in given:
        reasons["head_learning_rate"] = "--learning_rate is given (the head's rate defaults to it)"
    no_evaluation = next((f"--{k} no" for k in ("eval_strategy", "evaluation_strategy") if says(given.get(k), "no")), None)  # fmt: skip
    last_epoch = "load_best_model_at_end" in given and says(given["load_best_model_at_end"], "false", "0", "no")
    selection = ("load_best_model_at_end", "early_stopping_patience", "metric_for_best_model", "greater_is_better")
    for key in selection:
        if key in preset_values and key not in given:
            if no_evaluation:
                reasons[key] = f"{no_evaluation} is given (nothing to select the best epoch from)"
            elif last_epoch and key != "load_best_model_at_end":
                reasons[key] = "--load_best_model_at_end false is given (the last epoch is kept)"
    return reasons


@dataclass
class Resolved:
    """A run's values with its protocol's preset filled in under them, and where each preset value went."""

    values: list[str] | dict[str, Any]
    applied: dict[str, Any]
    """The preset's values that were filled in."""
    not_applied: dict[str, str]
    """The preset's values left out, each with the user's value that rules it out."""


def resolve_protocol(values: list[str] | dict[str, Any]) -> Resolved:
    """``values`` (a command line or the dict of a JSON argument file) with the named protocol's preset filled in
    under them (:func:`not_applied` says what it may not fill)."""
    given = dict(values) if isinstance(values, dict) else given_values(values)
    protocol, task = given.get("protocol"), given.get("task_name")
    method = given.get("method") or "full"
    if protocol is None:
        return Resolved(values, {}, {})
    preset_values = preset(str(protocol), None if task is None else str(task), str(method))
    ruled_out = not_applied(preset_values, given)
    applied = {k: v for k, v in preset_values.items() if k not in ruled_out}
    ruled_out = {k: why for k, why in ruled_out.items() if k not in given}  # the user's own values are no news
    if isinstance(values, dict):
        return Resolved({**applied, **values}, applied, ruled_out)
    return Resolved(as_flags(applied) + list(values), applied, ruled_out)


def apply_protocol(values: list[str] | dict[str, Any]) -> tuple[list[str] | dict[str, Any], dict[str, Any]]:
    """``values`` with the protocol's preset filled in under them, and the preset values that were applied."""
    resolved = resolve_protocol(values)
    return resolved.values, resolved.applied


def describe(protocol: str) -> str:
    """One line per registered method of what ``protocol`` sets on RTE (for the README and docs); in the paper's
    protocol, the values that are this project's choice are named after the line."""
    lines = []
    for name, cls in _methods().items():
        if protocol == "paper" and cls.paper_learning_rate is None:
            lines.append(f"{name}: no paper preset")
            continue
        ours = f"  (ours: {', '.join(cls.paper_ours)})" if protocol == "paper" and cls.paper_ours else ""
        lines.append(f"{name}: {json.dumps(preset(protocol, 'rte', name))}{ours}")
    return "\n".join(lines)
