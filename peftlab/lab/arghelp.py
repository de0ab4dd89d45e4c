"""``--help`` of a run's arguments under headings a researcher looks for, instead of one list of ~200 options.

``HfArgumentParser`` adds every option of every argument dataclass to one list ("options"); :func:`group_help`
moves each into the argument group of its heading (:data:`HEADINGS`, in that order). Argument groups only change
how ``--help`` reads: the options, their defaults and what they parse to are the same.
"""

from __future__ import annotations

import argparse
import dataclasses

from transformers import TrainingArguments

MODEL = "Model and head"
METHOD = "Method (PEFT)"
DATA = "Data"
PROTOCOL = "Protocol"
TRAINING = "Training"
SPEED = "Speed and memory"
SEARCH = "Search"
OTHER = "Other Trainer options (transformers.TrainingArguments)"
HEADINGS = (MODEL, METHOD, DATA, PROTOCOL, TRAINING, SPEED, SEARCH, OTHER)
"""The headings of ``--help``, in the order it shows them."""

TRAINING_OPTIONS = (
    "output_dir", "overwrite_output_dir", "do_train", "do_eval", "do_predict",
    "num_train_epochs", "max_steps", "learning_rate", "head_learning_rate", "weight_decay", "warmup_steps",
    "warmup_ratio", "lr_scheduler_type", "max_grad_norm", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "train_sampling_strategy", "group_by_length", "seed", "data_seed",
    "eval_strategy", "evaluation_strategy", "eval_steps", "metric_for_best_model", "greater_is_better",
    "load_best_model_at_end", "best_model_in_memory", "early_stopping_patience", "early_stopping_threshold",
    "save_strategy", "save_steps", "save_total_limit", "save_model", "resumable", "resumable_minutes",
    "resume_from_checkpoint", "bf16", "fp16", "report_to", "run_name", "logging_strategy", "logging_steps",
    "logging_first_step", "disable_tqdm",
)  # fmt: skip
"""The ``TrainingArguments`` (ours and the Trainer's) a user of this tool sets, in the order ``--help`` lists them."""

SPEED_OPTIONS = (
    "cache_frozen_prefix", "frozen_cache_dir", "cache_dtype", "model_dtype", "fast_dropout", "pad_to_max_length",
    "dataloader_num_workers",
)  # fmt: skip
"""Options that change how fast a run goes or how much memory it takes, whatever class declares them."""


HELP = {
    "report_to": "Where the Trainer also logs: tensorboard (the events in <output_dir>/tensorboard, one TensorBoard "
    "run per run folder: tensorboard --logdir <a run's folder, or a sweep's root>), wandb, mlflow, ...; 'all' for "
    "every installed one, 'none' for none.",
}
"""Help of the Trainer's options that says what they do in this tool."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``HfArgumentParser``'s formatter (defaults shown) naming an option's value once, after all its spellings
    (``--max_steps, --max-steps MAX_STEPS``, as Python 3.13's argparse writes it), not after each."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if is_negation(action):  # its own default (False) is not the option's
            return action.help
        return super()._get_help_string(action)


def is_negation(action: argparse.Action) -> bool:
    """Whether ``action`` is the ``--no_<name>`` that ``HfArgumentParser`` adds to an option that defaults to true."""
    return action.const is False and action.option_strings[:1] == [f"--no_{action.dest}"]


def heading_of(name: str, classes: dict[str, str], trainer_options: frozenset[str]) -> str:
    """The heading of the option ``name``: listed by name, else its dataclass's (``classes``: name -> heading);
    an option of the Trainer's not listed goes last, an option of our own training arguments under Training."""
    if name in SPEED_OPTIONS:
        return SPEED
    if name in TRAINING_OPTIONS:
        return TRAINING
    if name in trainer_options or name not in classes:
        return OTHER
    return classes[name]


def group_help(parser: argparse.ArgumentParser, class_headings: dict[type, str]) -> argparse.ArgumentParser:
    """Move every option of ``parser`` (built by ``HfArgumentParser`` from the classes of ``class_headings``) into
    the argument group of its heading; ``-h/--help`` stays first, under "options". Returns ``parser``."""
    classes: dict[str, str] = {}
    for cls, heading in class_headings.items():
        for f in dataclasses.fields(cls):
            classes.setdefault(f.name, heading)
    trainer_options = frozenset(f.name for f in dataclasses.fields(TrainingArguments))
    groups = {heading: parser.add_argument_group(heading) for heading in HEADINGS}
    order = {name: index for index, name in enumerate(TRAINING_OPTIONS + SPEED_OPTIONS)}
    moved: dict[str, list[argparse.Action]] = {heading: [] for heading in HEADINGS}
    for group in parser._action_groups:
        if group.title in groups:
            continue
        kept = []
        for action in group._group_actions:
            if action.dest in (argparse.SUPPRESS, "help") or not action.option_strings:
                kept.append(action)
            else:
                moved[heading_of(action.dest, classes, trainer_options)].append(action)
        group._group_actions[:] = kept
    for heading, actions in moved.items():  # listed options in their list's order, the others as declared
        actions.sort(key=lambda action: order.get(action.dest, len(order)))
        groups[heading]._group_actions.extend(actions)
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if is_negation(action):
            action.help = f"Same as --{action.dest} false."
        elif action.dest in HELP:
            action.help = HELP[action.dest]
        if action.choices is not None and len(",".join(map(str, action.choices))) > 30 and action.metavar is None:
            # {a,b,...} of forty values, twice on the option's line: a name there, the values in its help
            action.metavar = action.dest.upper()
            action.help = f"{action.help or ''} One of: {', '.join(map(str, action.choices))}.".strip()
    return parser
