"""A run's arguments parsed into a :class:`RunSpec`: from the command line, one JSON argument file or a dict (a sweep
job's run), ``--protocol`` presets applied under every value given, and a JSON file's values checked against the
arguments' types (``HfArgumentParser.parse_dict`` does not)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import logging
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    HfArgumentParser,
)

from peftlab.errors import ConfigError, PeftlabError
from peftlab.glue.tasks import GlueTask
from peftlab.jsontypes import did_you_mean, fits, type_name
from peftlab.lab import arghelp
from peftlab.lab.args import DataArguments, GlueTrainingArguments, ModelArguments
from peftlab.lab.autolayer import AutoLayerArguments
from peftlab.lab.protocols import ProtocolArguments, given_values, resolve_protocol, says
from peftlab.lab.search import (
    SearchArguments,
)
from peftlab.methods import PeftArguments

logger = logging.getLogger("peftlab")


ARGUMENT_CLASSES = (
    ModelArguments, PeftArguments, DataArguments, GlueTrainingArguments, SearchArguments, ProtocolArguments,
    AutoLayerArguments,
)  # fmt: skip

HELP_HEADINGS = {
    ModelArguments: arghelp.MODEL, PeftArguments: arghelp.METHOD, AutoLayerArguments: arghelp.METHOD,
    DataArguments: arghelp.DATA, ProtocolArguments: arghelp.PROTOCOL, GlueTrainingArguments: arghelp.TRAINING,
    SearchArguments: arghelp.SEARCH,
}  # fmt: skip
"""The ``--help`` heading of each argument class's options (:func:`peftlab.lab.arghelp.group_help` moves some)."""

USAGE = "%(prog)s [OPTIONS]\n       %(prog)s ARGS.json [MORE.json ...]"
DESCRIPTION = (
    "Fine-tune and evaluate a PEFT method on a GLUE task (or your own data). A JSON file of the same names may "
    "replace the options; several JSON files run one after another in this process."
)


def make_parser(prog: str | None = None) -> HfArgumentParser:
    """The parser of a run's arguments, its ``--help`` under headings (:mod:`peftlab.lab.arghelp`)."""
    parser = HfArgumentParser(ARGUMENT_CLASSES, prog=prog, usage=USAGE, description=DESCRIPTION)
    return arghelp.group_help(parser, HELP_HEADINGS)


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One run's arguments as parsed (never rewritten afterwards) and what the user gave."""

    model_args: ModelArguments
    peft_args: PeftArguments
    data_args: DataArguments
    training_args: GlueTrainingArguments
    search_args: SearchArguments
    protocol_args: ProtocolArguments
    auto_args: AutoLayerArguments
    argv: list[str]
    given: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the user gave, as given (flags as typed, or the argument file's values), before any preset."""

    @property
    def parsed(self) -> tuple:
        return (self.model_args, self.peft_args, self.data_args, self.training_args)

    @property
    def output_dir(self) -> Path:
        return Path(self.training_args.output_dir)


@dataclass(frozen=True, eq=False)
class Plan:
    """A prepared run (:func:`peftlab.lab.checks.prepare`): its parsed arguments (``spec``, untouched) and what the
    checks resolved from them. ``training_args`` is a resolved copy of the parsed ones (the task's selection metric
    for ``main``, the checkpoint to resume from) and ``peft_args`` the run's methods (an ``auto`` run's, at the
    chosen layer once it is chosen); every other argument group is the parsed one. A stage that resolves more makes
    a new plan (``dataclasses.replace``)."""

    spec: RunSpec
    training_args: GlueTrainingArguments
    peft_args: PeftArguments
    task: GlueTask | None = None
    glue_dir: str | None = None
    model_path: str = ""
    tokenizer_path: str = ""
    space: dict | None = None
    search_key: str = ""
    """What the run's search is (:func:`peftlab.lab.search.search_key`): an Optuna study continues only the same one."""
    cache_need: Any = None
    auto_candidates: tuple[int, ...] | None = None
    """The candidate layers of a ``--target_layers auto`` run (None: the run's layers are given)."""
    resume_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What a checkpoint of this run records and a resumed run must share
    (:func:`peftlab.checkpoints.resume_arguments`)."""
    resume_named: bool = False
    """``--resume_from_checkpoint`` names the checkpoint; otherwise a ``--resumable`` run looks for its own again
    when it starts, holding its folder's lock."""

    @classmethod
    def of(cls, spec: RunSpec) -> Plan:
        """The plan before any check: the parsed arguments, the training arguments copied to resolve into."""
        return cls(spec, copy.copy(spec.training_args), spec.peft_args)

    def resolved(self, training: dict[str, Any] | None = None, **changes: Any) -> Plan:
        """This plan with ``changes``; ``training`` values set on a new copy of its training arguments."""
        if training:
            args = copy.copy(self.training_args)
            for name, value in training.items():
                setattr(args, name, value)
            changes["training_args"] = args
        return dataclasses.replace(self, **changes)

    model_args = property(lambda self: self.spec.model_args)
    data_args = property(lambda self: self.spec.data_args)
    search_args = property(lambda self: self.spec.search_args)
    protocol_args = property(lambda self: self.spec.protocol_args)
    auto_args = property(lambda self: self.spec.auto_args)
    argv = property(lambda self: self.spec.argv)
    given = property(lambda self: self.spec.given)

    @property
    def parsed(self) -> tuple:
        return (self.model_args, self.peft_args, self.data_args, self.training_args)

    @property
    def output_dir(self) -> Path:
        return self.spec.output_dir  # never resolved


def parse_args(argv: list[str] | dict[str, Any] | None = None) -> RunSpec:
    """Parse the command line, a single ``.json`` file holding the same names, or such a dict (a sweep job's run,
    recorded as the ``args.json`` it writes into its folder); ``--protocol`` presets are applied first, so every
    value given explicitly overrides them."""
    prog = "peftlab train" if Path(sys.argv[0]).name == "peftlab" else None  # --help names the command typed
    parser = make_parser(prog)
    argv = sys.argv[1:] if argv is None else argv
    given = argv if isinstance(argv, dict) else None
    if given is not None:
        argv = [str(Path(str(given.get("output_dir"))) / "args.json")]
    from_file = len(argv) == 1 and argv[0].endswith(".json")
    try:
        if from_file:
            explicit = dict(given) if given is not None else read_argument_file(argv[0])
            source = f"Argument file {argv[0]}" if given is None else f"The arguments of run {given.get('output_dir')}"
            resolved = resolve_protocol(check_argument_types(explicit, source))
            parsed = parser.parse_dict(resolved.values, allow_extra_keys=False)
        else:
            explicit = given_values(argv)
            resolved = resolve_protocol(argv)
            check_known_flags(parser, resolved.values)
            parsed = parser.parse_args_into_dataclasses(args=resolved.values)
        spec = RunSpec(*parsed, argv=list(argv), given=explicit)
        spec.protocol_args.applied, spec.protocol_args.not_applied = resolved.applied, resolved.not_applied
        check_given(spec)
        stages = ("do_train", "do_eval", "do_predict")
        if not (set(explicit) | set(resolved.applied)).intersection(stages):
            logger.info("None of --do_train/--do_eval/--do_predict given: training and evaluating.")
            spec.training_args.do_train = spec.training_args.do_eval = True
            spec.training_args.check_training_length()
    except PeftlabError:
        raise
    except (ValueError, TypeError) as err:  # raised by the dataclasses' own checks and by parse_dict
        where = f" (argument file {argv[0]})" if from_file and given is None else ""
        raise ConfigError(f"{err}{where}") from err
    return spec


def check_known_flags(parser, argv: list[str]) -> None:
    """Refuse a flag no option has, naming it and the closest options, before anything else is read (the
    parser's own message lists the leftover words only)."""
    _, unknown = parser.parse_known_args(argv)
    flags = [word.split("=", 1)[0] for word in unknown if word.startswith("-")]
    if not flags:
        return
    names = {option.lstrip("-") for action in parser._actions for option in action.option_strings}
    close = difflib.get_close_matches(flags[0].lstrip("-"), sorted(names), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(f'--{name}' for name in close)}?)" if close else ""
    more = f" (also unknown: {', '.join(flags[1:])})" if len(flags) > 1 else ""
    raise ConfigError(f"Unknown option {flags[0]}{hint}{more}; peftlab train --help lists them all.")


def check_given(spec: RunSpec) -> None:
    """What the user gave that the parsed arguments cannot show: a run writes into a folder the user named, and
    two of its options must not contradict each other (the parsed values no longer tell a default from a choice)."""
    if not spec.given.get("output_dir"):  # (the Trainer's own default would be ./trainer_output)
        raise ConfigError(
            'No --output_dir (or "output_dir" in the argument file): give the folder the run writes its results '
            "into, e.g. --output_dir runs/rte."
        )
    given = spec.given
    if "early_stopping_patience" in given and says(given.get("load_best_model_at_end"), "false", "0", "no"):
        raise ConfigError(
            "--early_stopping_patience keeps the best evaluation, and --load_best_model_at_end false asks for the "
            "last one: drop one of them."
        )


@functools.cache
def argument_types() -> dict[str, Any]:
    """Every argument's annotation, by name (the dataclasses' fields that are arguments)."""
    types_: dict[str, Any] = {}
    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        types_.update({f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.name not in types_})
    return types_


def check_argument_types(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` (a JSON argument file's) checked against the arguments' types, which ``HfArgumentParser.parse_dict``
    does not do: it passes ``"three"`` on as a number of epochs, to fail (or not) somewhere in training. A number
    given where a string is expected becomes that string, as on the command line (``"target_layers": 5``)."""
    checked = dict(values)
    hints = argument_types()
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown argument {key!r}{did_you_mean(key, hints)}.")
        if fits(hints[key], value):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and fits(hints[key], str(value)):
            checked[key] = str(value)
            continue
        raise ConfigError(
            f"{source}: {key!r} is {json.dumps(value)} ({type(value).__name__}), expected {type_name(hints[key])}."
        )
    return checked


def read_argument_file(path: str) -> dict[str, Any]:
    """The JSON object of an argument file; a missing or malformed file is a one-line error naming it."""
    if not Path(path).is_file():
        raise ConfigError(f"Argument file {path} does not exist.")
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"Argument file {path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"Argument file {path} must hold a JSON object of argument names and values.")
    return values
