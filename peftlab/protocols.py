"""Named training protocols: ``--protocol paper`` or ``--protocol quick`` fills in every setting of a run that the
protocol fixes, for the run's task and method; every value given explicitly (flag or JSON key) overrides it.

- ``paper``: the paper's own protocol and module configurations, as its public code sets them
  (github.com/PKU-TANGENT/Efficiency; every value is cited file by file in ``docs/paper_protocol.md``).
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


FROZEN_METHODS = ("probe", "bitfit", "lora", "adapter", "prefix", "ffn", "attn")


def quick(task: str | None, method: str) -> dict[str, Any]:
    """3 epochs, batch 32, warm-up 0.06, weight decay 0.1, lr 5e-5 for full fine-tuning and 2e-3 (module and head)
    for every frozen-backbone method; the last epoch's model is scored."""
    lr = 5e-5 if method == "full" else 2e-3
    return {
        "num_train_epochs": 3, "per_device_train_batch_size": 32, "warmup_ratio": 0.06, "weight_decay": 0.1,
        "max_seq_length": 128, "learning_rate": lr, "head_learning_rate": lr,
    }  # fmt: skip


# The paper's values; docs/paper_protocol.md gives the file and line of each. The learning rates of FFN-only
# fine-tuning and of the frozen probe are a script argument there ($2, no default): ours are marked below.
PAPER_LEARNING_RATE = {
    "full": 2e-5, "adapter": 2e-3, "lora": 2e-3, "prefix": 2e-4, "bitfit": 2e-4,
    "ffn": 2e-4, "attn": 2e-4,  # our choice: the rate the paper gives BitFit, the other method training pretrained parameters
    "probe": 2e-3,  # our choice: the head's rate in the paper's adapter and LoRA runs
}  # fmt: skip
PAPER_SELECTION_METRIC = {"cola": "matthews_correlation", "stsb": "spearmanr"}
"""The dev metric whose best epoch is kept (run_glue.py:67-77,406 there); accuracy for every other task."""
PAPER_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "adapter": {
        "bottleneck_dim": 2, "adapter_activation": "tanh", "adapter_init": "model", "adapter_residual_norm": True,
        "adapter_layernorm_affine": True, "adapter_scaling": 1.0, "adapter_layernorm": False,
    },
    "lora": {"lora_rank": 1, "lora_alpha": 1.0, "lora_targets": "query,key", "lora_init": "normal", "lora_dropout": 0.0},
    "prefix": {"prefix_length": 2, "prefix_reparam": False},
    "bitfit": {"bitfit_targets": "query,ffn_in", "bitfit_offset": True},
    "ffn": {"train_extra_roles": "attn_out,attn_norm,ffn_norm"},  # its name rule: "intermediate" or "output"
}  # fmt: skip


def paper(task: str | None, method: str) -> dict[str, Any]:
    """The paper's scripts: best epoch of 10 (MRPC 5) with early stopping, batch 16, per-method learning rates and
    module sizes, mean pooling and an MLP head; full fine-tuning 3 epochs at 2e-5 with CLS pooling (the default
    of finetune_glue.sh's model class)."""
    lr = PAPER_LEARNING_RATE.get(method, 2e-3)
    values: dict[str, Any] = {
        "per_device_train_batch_size": 16, "per_device_eval_batch_size": 8, "warmup_ratio": 0.06,
        "weight_decay": 0.1, "max_seq_length": 128, "eval_strategy": "epoch", "load_best_model_at_end": True,
        "metric_for_best_model": PAPER_SELECTION_METRIC.get(task or "", "accuracy"), "greater_is_better": True,
        "learning_rate": lr, "head_learning_rate": lr, "pooling": "mean", "head": "mlp",
    }  # fmt: skip
    if task is None:  # the user's own data: select on the task's main metric
        values["metric_for_best_model"] = "main"
    if method == "full":
        values.update({"num_train_epochs": 3, "early_stopping_patience": 10, "pooling": "cls"})
    else:
        values.update({"num_train_epochs": 5 if task == "mrpc" else 10, "early_stopping_patience": 5})
    values.update(PAPER_METHOD_OPTIONS.get(method, {}))
    return values


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
    from peftlab.args import ALIAS_OF

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
    """One line per method of what ``protocol`` sets (for the README and docs)."""
    return "\n".join(f"{m}: {json.dumps(preset(protocol, 'rte', m))}" for m in ("full", *FROZEN_METHODS))
