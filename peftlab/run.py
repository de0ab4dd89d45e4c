"""The GLUE runs behind ``run_glue.py``: check everything, load data and model, train, evaluate, predict, save.

One process can do many runs (``run_glue.py a.json b.json ...``, which is how sweeps run). They share a
:class:`Workspace`: each dataset is read and tokenized once, each pretrained model loaded once (every run trains
its own copy), and the frozen-prefix caches of all the runs are filled in one pass per split and then kept in
memory. A run's results, folder and ``run_config.json`` are those it would have alone, and its metrics are
bit-identical to running it alone: a single run is the same code with a workspace of its own.

:func:`run_many` checks every run before any of them loads a model (:func:`prepare`), then runs them one after
another (:func:`execute`). Each stage is a function so it can be tested on its own.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import functools
import gc
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    set_seed,
)

import peftlab
from peftlab.args import ALIASES, DataArguments, GlueTrainingArguments, ModelArguments, strategy_name
from peftlab.autolayer import SCRATCH_PREFIX, AutoLayerArguments, at_layer, check_auto, choose_layer, wants_auto
from peftlab.cache import CachedCollator, FrozenPrefixCache, cache_datasets, default_cache_dir, need_of
from peftlab.checkpoints import (
    AUTO_CHOICE,
    DATA_DIGEST,
    check_checkpoint_fits,
    complete_checkpoints,
    kept_choice,
    names_checkpoint,
    remove_checkpoints,
    resolve_checkpoint,
    resume_arguments,
)
from peftlab.errors import ConfigError, PeftlabError
from peftlab.glue.data import RunData, data_digest, eval_metric_suffix, load_run_data
from peftlab.glue.metrics import compute_metrics_fn, predictions_from_logits
from peftlab.glue.submission import write_submission
from peftlab.glue.tasks import GlueTask, get_task
from peftlab.io import check_free_space, check_writable, nearest_existing, write_json
from peftlab.jsontypes import did_you_mean, fits, type_name
from peftlab.methods import PeftArguments
from peftlab.modeling import (
    BUNDLED_MODEL,
    MODEL_CONFIG_NAME,
    WEIGHTS_NAME,
    HeadConfig,
    SequenceClassifier,
    check_buildable,
    check_model_path,
    is_trained_run,
    load_backbone,
    load_classifier,
    read_model_config,
    resolve_model_path,
)
from peftlab.protocols import ProtocolArguments, given_values, resolve_protocol, says
from peftlab.search import (
    SearchArguments,
    check_study,
    explicit_arguments,
    parse_space,
    run_search,
    search_key,
    trial_values,
)
from peftlab.trainer import GlueTrainer

logger = logging.getLogger("peftlab")

RUN_CONFIG_NAME = "run_config.json"
RESULTS_NAME = "all_results.json"
LOCK_NAME = ".lock"


# --------------------------------------------------------------------------------------------------------------
# Arguments and checks (cheap; all run before any model is loaded)
# --------------------------------------------------------------------------------------------------------------
ARGUMENT_CLASSES = (
    ModelArguments, PeftArguments, DataArguments, GlueTrainingArguments, SearchArguments, ProtocolArguments,
    AutoLayerArguments,
)  # fmt: skip


@dataclass
class RunSpec:
    """One run: its parsed arguments and what the checks resolved from them."""

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
    task: GlueTask | None = None
    glue_dir: str | None = None
    model_path: str = ""
    tokenizer_path: str = ""
    space: dict | None = None
    search_key: str = ""
    """What the run's search is (:func:`peftlab.search.search_key`): an Optuna study continues only the same one."""
    cache_need: Any = None
    auto_candidates: list[int] | None = None
    """The candidate layers of a ``--target_layers auto`` run (None: the run's layers are given)."""
    resume_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What a checkpoint of this run records and a resumed run must share
    (:func:`peftlab.checkpoints.resume_arguments`)."""
    resume_named: bool = False
    """``--resume_from_checkpoint`` names the checkpoint; otherwise a ``--resumable`` run looks for its own again
    when it starts, holding its folder's lock."""
    frozen_layers_mode: str = "train (dropout active in frozen layers, as in the paper's code)"

    @property
    def parsed(self) -> tuple:
        return (self.model_args, self.peft_args, self.data_args, self.training_args)

    @property
    def output_dir(self) -> Path:
        return Path(self.training_args.output_dir)


def parse_args(argv: list[str] | dict[str, Any] | None = None) -> RunSpec:
    """Parse the command line, a single ``.json`` file holding the same names, or such a dict (a sweep job's run,
    recorded as the ``args.json`` it writes into its folder); ``--protocol`` presets are applied first, so every
    value given explicitly overrides them."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
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


def resolve_glue_dir(data_args: DataArguments) -> str | None:
    """``--glue_dir``, else ``$GLUE_DIR``, else ``None`` (the hub); a given folder must exist."""
    glue_dir = data_args.glue_dir or os.environ.get("GLUE_DIR") or None
    if data_args.task_name is None or glue_dir is None:
        return None
    if not Path(glue_dir).is_dir():
        origin = "--glue_dir" if data_args.glue_dir else "GLUE_DIR"
        raise ConfigError(f"{origin} {glue_dir!r} is not a folder. Point it at a GLUE folder such as ../shared/glue.")
    return glue_dir


def check_output_dir(training_args: GlueTrainingArguments, model_args: ModelArguments) -> None:
    """Refuse to write into a non-empty output folder unless asked to. Evaluating a trained run in its own folder
    is refused too: its results would replace those of the training run."""
    out = Path(training_args.output_dir)
    if model_args.model_name_or_path and out.resolve() == Path(model_args.model_name_or_path).resolve():
        raise ConfigError(
            f"--output_dir {str(out)!r} is the trained run given as --model_name_or_path: its all_results.json and "
            "run_config.json would be replaced. Choose another --output_dir for this evaluation."
        )
    if not out.is_dir() or not any(p.name != LOCK_NAME for p in out.iterdir()) or training_args.overwrite_output_dir:
        return
    if training_args.resumable and training_args.do_train and complete_checkpoints(out, resumable_only=True):
        return  # a --resumable run started again on its own folder
    raise ConfigError(
        f"--output_dir {str(out)!r} exists and is not empty. Pass --overwrite_output_dir to write into it, "
        "or choose another folder."
        + (
            " (--resume_from_checkpoint also needs --overwrite_output_dir)"
            if training_args.resume_from_checkpoint
            else ""
        )
    )


def check_cache_dir(training_args: GlueTrainingArguments) -> None:
    """The frozen-prefix cache's folder must be a folder (or not exist yet). One that cannot be written is no error:
    the cache is an optimisation and then stays in memory (:class:`peftlab.cache.FrozenPrefixCache`)."""
    directory = Path(training_args.frozen_cache_dir or default_cache_dir())
    origin = "--frozen_cache_dir" if training_args.frozen_cache_dir else "PEFTLAB_CACHE" if os.environ.get("PEFTLAB_CACHE") else "the default cache folder"  # fmt: skip
    existing = nearest_existing(directory)
    if existing is not None and not existing.is_dir():
        raise ConfigError(
            f"The frozen-prefix cache folder {str(directory)!r} ({origin}) cannot be made: {str(existing)!r} is a "
            "file. Point it at a folder, or drop --cache_frozen_prefix."
        )


def check_trained_run_options(spec: RunSpec) -> None:
    """A trained run given as ``--model_name_or_path`` is loaded as it was saved (its method, layers, options and
    head); an option given that asks for another is refused, not silently ignored."""
    path = spec.model_args.model_name_or_path
    if not is_trained_run(path):
        return
    saved = read_model_config(path)
    parsed = {**asdict(spec.peft_args), "pooling": spec.model_args.pooling, "head": spec.model_args.head,
              "head_dropout": spec.model_args.head_dropout}  # fmt: skip
    there = {
        **saved.get("peft", {}),
        **{("head_dropout" if k == "dropout" else k): v for k, v in saved["head"].items()},
    }
    differ = [k for k in spec.given if k in parsed and k in there and parsed[k] != there[k]]
    if differ:
        asked = ", ".join(f"--{k} {parsed[k]}" for k in differ)
        saved_as = ", ".join(f"{k} {there[k]}" for k in differ)
        raise ConfigError(
            f"--model_name_or_path {path!r} is a trained run ({saved_as}); {asked} asks for another model, and a "
            f"trained run is {'trained further' if spec.training_args.do_train else 'evaluated'} as it was saved. "
            f"Drop {', '.join('--' + k for k in differ)}, or start from its base model {saved['base_model']!r}."
        )


SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def check_model_dtype(model_args: ModelArguments, training_args: GlueTrainingArguments) -> None:
    """A half-precision backbone computes under the matching autocast, which also keeps the trained float32
    parameters' products in that precision (without it, float32 modules would meet half-precision activations)."""
    flag = None if model_args.model_dtype == "float32" else SHORT_DTYPES[model_args.model_dtype]
    if flag and not getattr(training_args, flag):
        raise ConfigError(
            f"--model_dtype {model_args.model_dtype} needs --{flag} (autocast in the same precision); add --{flag}, "
            "or drop --model_dtype to load the backbone in float32."
        )
    if flag and is_trained_run(model_args.model_name_or_path):
        raise ConfigError(
            f"--model_dtype {model_args.model_dtype}: {model_args.model_name_or_path!r} is a trained run, which "
            "reloads in float32; drop --model_dtype."
        )


def check_devices(training_args: GlueTrainingArguments) -> None:
    if training_args.fp16 and not torch.cuda.is_available():
        raise ConfigError("--fp16 needs a CUDA GPU and none is visible. Drop --fp16 to train in fp32 on the CPU.")
    if training_args.bf16 and not torch.cuda.is_available() and not cpu_has_bf16():
        logger.warning("--bf16 on a CPU without bf16 instructions (avx512_bf16, amx_bf16): bf16 matrix products "
                       "are emulated there and usually slower than fp32.")  # fmt: skip


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (Linux: its flags in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def max_length_of(tokenizer: PreTrainedTokenizerBase, config: transformers.PretrainedConfig) -> int:
    """The longest input the model accepts (RoBERTa-style position offsets are in the tokenizer's limit)."""
    limits = [getattr(config, "max_position_embeddings", None)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    limits = [limit for limit in limits if limit]
    return min(limits) if limits else 512


# --------------------------------------------------------------------------------------------------------------
# What the runs of one process share
# --------------------------------------------------------------------------------------------------------------
def tokenize(
    data: datasets.Dataset,
    text_fields: tuple[str, ...],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    pad_to_max_length: bool,
) -> datasets.Dataset:
    """Tokenize ``data`` (one or two text fields), keeping ``label`` and ``idx`` and adding ``length``."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [batch[name] for name in text_fields]
        encoded = tokenizer(
            *texts, truncation=True, max_length=max_seq_length, padding="max_length" if pad_to_max_length else False
        )
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    return data.map(encode, batched=True, remove_columns=list(text_fields), desc="Tokenizing")


@dataclass
class Features:
    """Tokenized datasets of one run: train (or ``None``), eval sets by split, (task, set) by test split."""

    train: datasets.Dataset | None
    eval: dict[str, datasets.Dataset]
    test: dict[str, tuple[GlueTask, datasets.Dataset]]


class Workspace:
    """What the runs of one process share, each item made once on first use: loaded data, configs, tokenizers,
    tokenized features, pretrained backbones (kept untrained: runs get copies) and frozen-prefix caches."""

    def __init__(self) -> None:
        self._items: dict[tuple, Any] = {}

    def _get(self, key: tuple, make):
        if key not in self._items:
            self._items[key] = make()
        return self._items[key]

    @staticmethod
    def _hub(model_args: ModelArguments) -> dict[str, Any]:
        return {
            "cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token,
            "trust_remote_code": model_args.trust_remote_code,
        }  # fmt: skip

    def run_data(self, spec: RunSpec) -> RunData:
        d, t = spec.data_args, spec.training_args
        task = get_task(d.task_name) if d.task_name else None  # None: the user's files
        key = (
            "data", d.task_name, spec.glue_dir, d.train_file, d.validation_file,
            d.test_file, t.do_train, t.do_eval, t.do_predict, d.train_split, d.split_dev, d.split_seed,
            d.max_train_samples, d.max_eval_samples, d.max_predict_samples, d.label_type,
        )  # fmt: skip
        return self._get(key, lambda: load_run_data(
            task, glue_dir=spec.glue_dir, train_file=d.train_file, validation_file=d.validation_file,
            test_file=d.test_file, do_train=t.do_train, do_eval=t.do_eval, do_predict=t.do_predict,
            train_split=d.train_split, split_dev=d.split_dev, split_seed=d.split_seed,
            max_train_samples=d.max_train_samples, max_eval_samples=d.max_eval_samples,
            max_predict_samples=d.max_predict_samples, label_type=d.label_type,
        ))  # fmt: skip

    def data_digest(self, spec: RunSpec) -> str:
        """The digest of the run's training and evaluation data (:func:`peftlab.glue.data.data_digest`)."""
        run_data = self.run_data(spec)
        return self._get(("digest", id(run_data)), lambda: data_digest(run_data))

    def config(self, path: str, model_args: ModelArguments):
        hub = self._hub(model_args)
        return self._get(("config", path, *hub.values()), lambda: AutoConfig.from_pretrained(path, **hub))

    def tokenizer(self, path: str, model_args: ModelArguments) -> PreTrainedTokenizerBase:
        hub = self._hub(model_args)
        return self._get(("tokenizer", path, *hub.values()), lambda: AutoTokenizer.from_pretrained(path, **hub))

    def features(self, spec: RunSpec) -> Features:
        run_data = self.run_data(spec)
        tokenizer = self.tokenizer(spec.tokenizer_path, spec.model_args)
        d = spec.data_args
        key = ("features", id(run_data), id(tokenizer), d.max_seq_length, d.pad_to_max_length)

        def make() -> Features:
            def encode(data: datasets.Dataset, fields: tuple[str, ...]) -> datasets.Dataset:
                return tokenize(data, fields, tokenizer, d.max_seq_length, d.pad_to_max_length)

            fields = run_data.task.text_fields
            return Features(
                None if run_data.train is None else encode(run_data.train, fields),
                {split: encode(data, fields) for split, data in run_data.eval.items()},
                {split: (task, encode(data, task.text_fields)) for split, (task, data) in run_data.test.items()},
            )

        return self._get(key, make)

    def backbone(self, spec: RunSpec) -> torch.nn.Module:
        """The pretrained backbone as loaded, shared by the runs (each trains a deep copy)."""
        hub, dtype = self._hub(spec.model_args), spec.model_args.model_dtype
        return self._get(
            ("backbone", spec.model_path, *hub.values(), dtype),
            lambda: load_backbone(spec.model_path, dtype, **hub).eval(),
        )

    def fill_passes(self) -> int:
        """Passes over a split that this workspace's frozen-prefix caches computed."""
        return sum(item.passes for key, item in self._items.items() if key[0] == "cache")

    def cache(self, spec: RunSpec) -> FrozenPrefixCache:
        t = spec.training_args
        directory = str(t.frozen_cache_dir or default_cache_dir())
        hub = self._hub(spec.model_args)
        return self._get(
            ("cache", spec.model_path, *hub.values(), spec.model_args.model_dtype, directory, t.cache_dtype),
            lambda: FrozenPrefixCache(self.backbone(spec), directory, t.cache_dtype),
        )


def head_config(model_args: ModelArguments, num_labels: int) -> HeadConfig:
    return HeadConfig(
        num_labels=num_labels, pooling=model_args.pooling, head=model_args.head, dropout=model_args.head_dropout
    )


def base_model_of(model_args: ModelArguments) -> str | None:
    """The pretrained model's name or path (for a saved run: the one it was trained from)."""
    if is_trained_run(model_args.model_name_or_path):
        return read_model_config(model_args.model_name_or_path)["base_model"]
    return model_args.model_name_or_path


def make_model(ws: Workspace, spec: RunSpec, peft_args: PeftArguments | None = None, model_args=None):
    """A fresh head and the run's methods on a copy of the pretrained backbone, or the classifier saved by an
    earlier run. Seeded by the caller: every random initial value comes from the run's seed."""
    model_args = model_args or spec.model_args
    num_labels = spec.task.num_labels
    if is_trained_run(model_args.model_name_or_path):
        model = load_classifier(model_args.model_name_or_path)
        if model.num_labels != num_labels:
            raise ConfigError(
                f"{model_args.model_name_or_path} was trained with {model.num_labels} labels; this task has {num_labels}."
            )
        return model
    pristine = ws.backbone(spec)
    backbone = share_frozen_copy(pristine).train()
    base = model_args.model_name_or_path or BUNDLED_MODEL
    model = SequenceClassifier(backbone, head_config(model_args, num_labels), base, peft_args or spec.peft_args)
    shared = {p.data_ptr() for p in pristine.parameters()}
    for param in model.parameters():  # what trains gets storage of its own; what stays frozen is shared
        if param.requires_grad and param.data_ptr() in shared:
            param.data = param.data.clone()
    return model


def share_frozen_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``backbone`` whose modules and parameter objects are its own but whose tensors share the
    original's storage (a copy of the structure only: milliseconds instead of copying every weight). Safe because
    a run never writes a frozen tensor: the optimizer sees only what trains (:func:`make_model` gives that its own
    storage) and LoRA's evaluation-time merge swaps in a new tensor instead of adding in place."""
    memo: dict[int, Any] = {id(t): t for t in backbone.buffers()}
    memo.update({id(p): torch.nn.Parameter(p.data, requires_grad=p.requires_grad) for p in backbone.parameters()})
    return copy.deepcopy(backbone, memo)


def prepare(ws: Workspace, spec: RunSpec) -> None:
    """Every check of one run that needs no model weights: a bad value fails here, before anything is loaded or
    written. Loads (into ``ws``) the run's data, config and tokenizer, which the checks need anyway."""
    model_args, peft_args, data_args, training_args = spec.parsed
    if data_args.task_name:
        get_task(data_args.task_name)  # an unknown name fails here
    elif data_args.train_file is None:
        raise ConfigError("Pass --task_name (one of the GLUE tasks) or --train_file with your own data.")
    spec.glue_dir = resolve_glue_dir(data_args)
    check_output_dir(training_args, model_args)
    check_writable(spec.output_dir, "--output_dir")
    check_devices(training_args)
    check_model_dtype(model_args, training_args)
    try:
        check_model_path(model_args.model_name_or_path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_trained_run_options(spec)
    if training_args.cache_frozen_prefix:
        check_cache_dir(training_args)
    run_data = ws.run_data(spec)
    spec.task = run_data.task
    spec.model_path = resolve_model_path(base_model_of(model_args))
    spec.tokenizer_path = model_args.tokenizer_name or (
        model_args.model_name_or_path if is_trained_run(model_args.model_name_or_path) else spec.model_path
    )
    try:
        config = ws.config(spec.model_path, model_args)
        tokenizer = ws.tokenizer(spec.tokenizer_path, model_args)
    except OSError as err:  # not a folder on disk, and not a model the hub (or its offline cache) has
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--model_name_or_path {spec.model_path!r}: cannot load it ({first}). Give a local model folder, a "
            "trained run's --output_dir, or a hub name (offline, only models already in the hub cache load)."
        ) from None
    limit = max_length_of(tokenizer, config)
    if data_args.max_seq_length > limit:
        raise ConfigError(f"--max_seq_length {data_args.max_seq_length} exceeds the model's limit of {limit} tokens.")
    metas = []
    if not is_trained_run(model_args.model_name_or_path):
        checked = [peft_args]
        if wants_auto(peft_args.method, peft_args.target_layers):
            if not training_args.do_train:
                raise ConfigError("--target_layers auto chooses a layer by training: add --do_train.")
            layers = peft_args.num_hidden_layers or config.num_hidden_layers
            spec.auto_candidates = check_auto(
                peft_args.method, peft_args.target_layers, spec.auto_args.auto_layers, layers
            )
            checked = [
                dataclasses.replace(peft_args, method=at_layer(peft_args.method, k)) for k in spec.auto_candidates
            ]
        try:
            head = head_config(model_args, spec.task.num_labels)
            metas = [check_buildable(config, head, p, model_args.model_dtype) for p in checked]
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if training_args.cache_frozen_prefix and spec.auto_candidates is None:
            spec.cache_need = need_of(metas[0])
    if search := spec.search_args.hp_search:
        model_fields = {f.name for f in dataclasses.fields(PeftArguments)} | {"head_dropout"}
        training_fields = {f.name for f in dataclasses.fields(GlueTrainingArguments)}
        spec.space = parse_space(spec.search_args.hp_space, training_fields, model_fields)
        if not training_args.do_eval:
            raise ConfigError(f"--hp_search {search} optimises the evaluation metric: add --do_eval.")
    if training_args.metric_for_best_model == "main":
        training_args.metric_for_best_model = spec.task.main_metric
    if training_args.resumable and spec.space is not None:
        raise ConfigError("--resumable resumes one training run; a --hp_search has many (drop --resumable).")
    auto_args = [spec.auto_args] if spec.auto_candidates is not None else []  # its choice's settings too
    spec.resume_args = resume_arguments(*spec.parsed, *auto_args)
    if training_args.do_train and (training_args.resumable or names_checkpoint(training_args.resume_from_checkpoint)):
        spec.resume_args[DATA_DIGEST] = ws.data_digest(spec)  # a resumed run must train and evaluate on the same data
    if spec.space is not None:
        spec.search_key = search_key(spec.space, spec.resume_args)
        check_study(spec.search_args, spec.output_dir, spec.search_key)
    spec.resume_named = names_checkpoint(training_args.resume_from_checkpoint)
    training_args.resume_from_checkpoint = resolve_checkpoint(training_args, spec.resume_args)
    if training_args.resume_from_checkpoint and metas and spec.auto_candidates is None:
        check_checkpoint_fits(
            training_args.resume_from_checkpoint, metas[0], model_args.model_name_or_path or BUNDLED_MODEL
        )


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------
def git_commit() -> str:
    """The repository's commit (with ``+dirty`` for uncommitted changes), or ``unknown`` outside a checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "peftlab": peftlab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "numpy": np.__version__,
    }


def run_config(spec: RunSpec, run_data: RunData, model: SequenceClassifier) -> dict[str, Any]:
    """Everything that determines the run, to be saved beside its results, and the modules its methods adapted."""
    model_args, _, data_args, training_args = spec.parsed
    return {
        "command": [sys.executable, "run_glue.py", *spec.argv],
        "protocol": {
            "name": spec.protocol_args.protocol,
            "preset": spec.protocol_args.applied,
            "preset_not_applied": spec.protocol_args.not_applied,
            "given": sorted(spec.given),
        },
        "model": {"base_model": base_model_of(model_args) or BUNDLED_MODEL, "resolved_path": spec.model_path},
        "task": run_data.task.name,
        "label_names": list(run_data.task.label_names) if run_data.task.label_names else None,
        "data_protocol": run_data.protocol,
        "model_args": {k: v for k, v in asdict(model_args).items() if k != "token"},
        "peft_args": asdict(model.peft_args),
        "targeted_modules": model.injection.targeted_modules,
        "data_args": asdict(data_args),
        "training_args": training_args.to_dict(),
        "model_selection": model_selection(training_args),
        "precision": {
            "training": "fp16 autocast" if training_args.fp16 else "bf16 autocast" if training_args.bf16 else "fp32",
            "frozen_prefix_cache": f"{training_args.cache_dtype} (filled in {SHORT_DTYPES[model_args.model_dtype]})"
            if training_args.cache_frozen_prefix
            else None,
        },
        "frozen_layers_mode": spec.frozen_layers_mode,
        "versions": versions(),
        "device": "cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def model_selection(training_args: GlueTrainingArguments) -> str:
    """How the reported model was chosen, in words (also for the tables)."""
    if training_args.select_best_in_memory or training_args.load_best_model_at_end:
        where = "kept in memory" if training_args.select_best_in_memory else "the Trainer's checkpoints"
        sign = "highest" if training_args.greater_is_better else "lowest"
        return f"best evaluation ({sign} eval_{training_args.metric_for_best_model}; {where})"
    return "last step"


def setup_logging(training_args: GlueTrainingArguments) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
            datefmt="%H:%M:%S",
            handlers=[logging.StreamHandler(sys.stdout)],
        )
    level = training_args.get_process_log_level()
    logger.setLevel(level if level != logging.WARNING else logging.INFO)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))


@contextmanager
def run_log(output_dir: Path):
    """Copy this run's log lines (ours and the Trainer's) into ``<output_dir>/log.txt`` while it runs."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(output_dir / "log.txt", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(name)s - %(message)s", "%H:%M:%S"))
    targets = [logger, transformers.utils.logging.get_logger()]
    for target in targets:
        target.addHandler(handler)
    try:
        yield
    finally:
        for target in targets:
            target.removeHandler(handler)
        handler.close()


class OutputLocked(PeftlabError):
    """Another live process is writing this run's output folder."""


@contextmanager
def output_lock(output_dir: Path):
    """Hold an exclusive lock on the output folder while the run writes it (the OS releases it when the process
    dies, however it dies): a second process on the same folder stops at once instead of clobbering it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputLocked(
            f"--output_dir {str(output_dir)!r} is being written by another running process; wait for it to end "
            "or choose another folder."
        ) from None
    try:
        yield
    finally:
        handle.close()


def is_locked(output_dir: Path) -> bool:
    """Whether a live process holds ``output_dir``'s lock now (a run another sweep driver is training)."""
    path = Path(output_dir) / LOCK_NAME
    if not path.is_file():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def predict(trainer, test_features: dict, test_sets: dict, output_dir: str) -> list[str]:
    """Predict every test split (all processes take part) and write the GLUE-server files (the first one only)."""
    written = []
    for split, (test_task, data) in test_features.items():
        output = trainer.predict(test_sets[split])
        if trainer.is_world_process_zero():
            predictions = predictions_from_logits(test_task, output.predictions)
            name = "test" if split == "ax" else split
            written.append(str(write_submission(test_task, name, data["idx"], predictions, output_dir)))
    return written


def hp_search(trainer, spec: RunSpec) -> dict[str, Any]:
    """Run the search; save its summary (``hp_search.json``) and the best trial as an argument file."""
    training_args = spec.training_args
    summary = run_search(
        trainer, spec.search_args, spec.space, spec.task.main_metric, training_args.output_dir, spec.search_key
    )
    best_args = explicit_arguments(*spec.parsed, spec.protocol_args)
    for alias in ALIASES:  # their values are already in the fields they set; kept, they would override a trial's
        best_args.pop(alias, None)
    best_args.update(summary["best"]["hyperparameters"])
    best_args["output_dir"] = str(Path(training_args.output_dir) / "best_run")
    best_args["overwrite_output_dir"] = True
    out = Path(training_args.output_dir)
    write_json(out / "best_run.json", best_args)
    summary["rerun"] = f"python run_glue.py {out / 'best_run.json'}"
    summary["versions"] = versions()
    write_json(out / "hp_search.json", summary)
    logger.info("Best trial: %s. Re-run it with: %s", summary["best"], summary["rerun"])
    results = {f"hp_search_best_{summary['objective']}": summary["best"]["value"], "hp_search_best": summary["best"]}
    write_json(out / RESULTS_NAME, results)
    return results


def with_cache(ws: Workspace, spec: RunSpec, model, named: dict[str, Any]):
    """``named`` datasets served from the frozen-prefix cache for ``model`` (sets its ``frozen_prefix``), and the
    collator that pads them; or the datasets as they are and the plain collator when the run does not cache."""
    tokenizer = ws.tokenizer(spec.tokenizer_path, spec.model_args)
    if not spec.training_args.cache_frozen_prefix or need_of(model) is None:
        if spec.training_args.cache_frozen_prefix:
            logger.warning("--cache_frozen_prefix: layer 0 (or the embeddings) trains, so there is nothing to cache.")
        return named, None if spec.data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer)
    return cache_datasets(model, named, tokenizer, ws.cache(spec)), CachedCollator(tokenizer)


def auto_layer(ws: Workspace, spec: RunSpec) -> dict[str, Any]:
    """Choose the layer of an ``auto`` run (:mod:`peftlab.autolayer`) and set it in ``spec``; returns the record.
    A run resumed from a checkpoint keeps the choice recorded there (made before it stopped; the checkpoint holds
    the module at that layer) instead of making it again."""
    if spec.training_args.world_size == 1:  # this process alone holds the folder: these are a killed start's
        for stale in spec.output_dir.glob(f"{SCRATCH_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    record = kept_choice(spec.training_args.resume_from_checkpoint)
    if record is None:
        record = choose_layer(ws, spec, *auto_candidate_hooks(ws, spec))
    else:
        logger.info("Auto layer: layer %d, as chosen before the run stopped (%s); not chosen again.",
                    record["chosen_layer"], spec.training_args.resume_from_checkpoint)  # fmt: skip
    spec.peft_args = dataclasses.replace(spec.peft_args, method=at_layer(spec.peft_args.method, record["chosen_layer"]))
    return record


def auto_candidate_hooks(ws: Workspace, spec: RunSpec) -> tuple[Callable, Callable]:
    """What :func:`peftlab.autolayer.choose_layer` builds candidates with: a seeded candidate's trainer, built as
    an ordinary run's; and the planning of the frozen-prefix caches the candidates read."""
    config = ws.config(spec.model_path, spec.model_args)
    head = head_config(spec.model_args, spec.task.num_labels)

    def candidate_trainer(peft, train, evaluation, args, callbacks):
        set_seed(args.seed)
        model = make_model(ws, spec, peft)
        wrapped, collator = with_cache(ws, spec, model, {"train": train, "eval": evaluation})
        sets = RunSets(wrapped["train"], {"selection": wrapped["eval"]}, {}, collator)
        return build_trainer(ws, spec, model, sets, args=args, callbacks=callbacks)

    def plan_cache(pefts, datasets_):
        if not spec.training_args.cache_frozen_prefix:
            return
        for need in filter(None, (need_of(check_buildable(config, head, peft)) for peft in pefts)):
            for data in datasets_:
                ws.cache(spec).plan(need, data)

    return candidate_trainer, plan_cache


@dataclass
class RunSets:
    """The datasets a run's trainer reads (wrapped with their cached tensors under ``--cache_frozen_prefix``)."""

    train: Any
    eval: dict[str, Any]
    test: dict[str, Any]
    collator: Any


def run_sets(ws: Workspace, spec: RunSpec, model: SequenceClassifier) -> RunSets:
    """The run's tokenized datasets and collator; with a planned cache, each wrapped with what it reads."""
    features = ws.features(spec)
    named = {
        **({"train": features.train} if features.train is not None else {}),
        **{f"eval:{k}": v for k, v in features.eval.items()},
        **{f"test:{k}": data for k, (_, data) in features.test.items()},
    }
    wrapped, collator = with_cache(ws, spec, model, named)
    if model.frozen_prefix:
        spec.frozen_layers_mode = (
            f"eval (layers below {model.frozen_prefix} are computed once, without dropout, and cached)"
        )
    return RunSets(
        wrapped.get("train"),
        {k: wrapped[f"eval:{k}"] for k in features.eval},
        {k: wrapped[f"test:{k}"] for k in features.test},
        collator,
    )


def build_trainer(
    ws: Workspace, spec: RunSpec, model: SequenceClassifier, sets: RunSets, args=None, callbacks: list | None = None
) -> GlueTrainer:
    """The Trainer of the run (with a model factory per trial under ``--hp_search``); ``args`` and ``callbacks``
    replace the run's training arguments and add to its callbacks (the candidates of ``--target_layers auto``)."""
    model_args, peft_args, _, training_args = spec.parsed
    training_args = args or training_args
    callbacks = list(callbacks or [])
    if training_args.early_stopping_patience is not None:
        callbacks.append(
            EarlyStoppingCallback(training_args.early_stopping_patience, training_args.early_stopping_threshold)
        )
    model_init = None
    if spec.space is not None:

        def model_init(trial=None):
            """Every search trial builds its model right after seeding, as an ordinary run does; then seeds again,
            as the Trainer's construction does in an ordinary run, so that the trial draws its data order and
            dropout from the same random state as ``best_run.json`` will (the Trainer seeds once, before this)."""
            values = trial_values(trial, spec.space)
            peft = dataclasses.replace(peft_args, **{k: v for k, v in values.items() if hasattr(peft_args, k)})
            head = dataclasses.replace(model_args, **{k: v for k, v in values.items() if k == "head_dropout"})
            built = make_model(ws, spec, peft, head)
            built.frozen_prefix = model.frozen_prefix
            set_seed(training_args.seed)
            return built

    return GlueTrainer(
        resume_arguments=spec.resume_args,
        model=None if model_init else model,
        model_init=model_init,
        args=training_args,
        train_dataset=sets.train,
        eval_dataset=next(iter(sets.eval.values()), None),
        processing_class=ws.tokenizer(spec.tokenizer_path, model_args),
        data_collator=sets.collator,
        compute_metrics=compute_metrics_fn(spec.task),
        callbacks=callbacks,
    )


def train(trainer: GlueTrainer, spec: RunSpec, train_set) -> dict[str, Any]:
    """Train; save what trained (and each method's export, e.g. LoRA in peft's format). Returns its results."""
    training_args, output_dir = spec.training_args, spec.output_dir
    results: dict[str, Any] = {}
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if training_args.save_model:
        trainer.save_model()
        if trainer.is_world_process_zero():
            results["saved_weights_bytes"] = (output_dir / WEIGHTS_NAME).stat().st_size
            trainer.model.export_methods(output_dir)
    trainer.save_state()
    results.update(train_result.metrics)
    earlier = (trainer.resumed or {}).get("train_seconds")
    if earlier is not None:  # the Trainer times the steps after the checkpoint only: report the whole run's
        part, whole = results["train_runtime"], results["train_runtime"] + earlier
        steps, after = trainer.state.global_step, trainer.state.global_step - trainer.resumed["step"]
        for key in ("train_samples_per_second", "train_steps_per_second"):
            if key in results and whole > 0 and after > 0:
                results[key] = round(results[key] * part / whole * steps / after, 3)
        results["train_runtime"] = round(whole, 4)
    results.update(trainer.selection_summary())
    results["train_samples"] = len(train_set)
    return results


def evaluate(trainer: GlueTrainer, spec: RunSpec, eval_sets: dict[str, Any]) -> dict[str, Any]:
    """Metrics on every evaluation set (``eval_<name>``, with the split's suffix: MNLI mismatched ``_mm``)."""
    results: dict[str, Any] = {}
    known = trainer.evaluation_of_final_model() if spec.training_args.do_train else None
    for index, (split, data) in enumerate(eval_sets.items()):
        if index == 0 and known is not None:  # training already evaluated these very weights on this split
            metrics = dict(known)
        else:
            metrics = trainer.evaluate(eval_dataset=data, metric_key_prefix="eval")
        metrics["eval_samples"] = len(data)
        suffix = eval_metric_suffix(split)
        results.update({f"{key}{suffix}": value for key, value in metrics.items()})
        logger.info("Evaluation on %s: %s", split, metrics)
    return results


def execute(ws: Workspace, spec: RunSpec) -> dict[str, Any]:
    """Train, evaluate and predict one prepared run; write its results. Returns them.

    The stages: build the model (seeded), wrap the data with the frozen-prefix cache, build the Trainer, then
    train, evaluate, predict, and write ``run_config.json`` and ``all_results.json`` (last: it marks the run done).
    """
    started, cpu_started = time.time(), time.process_time()
    training_args = spec.training_args
    if training_args.overwrite_output_dir and training_args.process_index == 0:
        remove_old_outputs(spec.output_dir)
    if training_args.resumable and not spec.resume_named:
        training_args.resume_from_checkpoint = None  # look again, now that this process holds the folder's lock
        training_args.resume_from_checkpoint = resolve_checkpoint(training_args, spec.resume_args)
    auto = auto_layer(ws, spec) if spec.auto_candidates is not None else None
    run_data = ws.run_data(spec)
    logger.info("Task %s, data protocol: %s", spec.task.name, run_data.protocol)
    set_seed(training_args.seed)
    model = make_model(ws, spec)
    if training_args.resume_from_checkpoint:
        check_checkpoint_fits(
            training_args.resume_from_checkpoint, model, spec.model_args.model_name_or_path or BUNDLED_MODEL
        )
    if training_args.process_index == 0:
        check_free_space(spec.output_dir, bytes_written(spec, model), "--output_dir")
    counts = model.parameter_counts()
    logger.info("Methods %s; parameters: %s; adapted: %s", model.injection.methods, counts,
                model.injection.targeted_modules)  # fmt: skip
    sets = run_sets(ws, spec, model)
    trainer = build_trainer(ws, spec, model, sets)
    trainer.run_clock = (started, cpu_started)
    if auto is not None:
        trainer.resume_extras[AUTO_CHOICE] = auto  # a resumed run keeps this choice
    if spec.space is not None:
        return hp_search(trainer, spec)
    config_record = run_config(spec, run_data, model)
    results: dict[str, Any] = dict(counts)
    if auto is not None:
        results["auto_layer"] = config_record["auto_layer"] = auto
    if training_args.do_train:
        results.update(train(trainer, spec, sets.train))
        if trainer.resumed is not None:
            results["resumed"] = config_record["resumed"] = trainer.resumed
        if auto is not None:  # the whole run (choice and final training) in units of the final training alone
            runtime = results["train_runtime"]  # the whole run's, a resumed one's too
            auto["cost_in_runs"] = round((auto["selection_seconds"] + runtime) / runtime, 2)
    if training_args.do_eval:
        results.update(evaluate(trainer, spec, sets.eval))
    if training_args.do_predict:
        results["predict_files"] = predict(trainer, ws.features(spec).test, sets.test, training_args.output_dir)
    results["data_protocol"] = run_data.protocol
    # CPU time counts all threads (core-seconds, whatever the load); a resumed run adds the time of the work it kept
    earlier = trainer.resumed or {}
    results["wall_seconds"] = round(earlier.get("wall_seconds", 0.0) + time.time() - started, 2)
    results["cpu_seconds"] = round(earlier.get("cpu_seconds", 0.0) + time.process_time() - cpu_started, 2)
    results["threads"] = torch.get_num_threads()
    if trainer.is_world_process_zero():
        config_record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(spec.output_dir / RUN_CONFIG_NAME, config_record)
        write_json(spec.output_dir / RESULTS_NAME, results)  # last: its presence marks the run finished
        if training_args.resumable:
            remove_checkpoints(spec.output_dir)
    return results


OLD_OUTPUTS = (RESULTS_NAME, RUN_CONFIG_NAME, "hp_search.json", "best_run.json", "trainer_state.json",
               WEIGHTS_NAME, MODEL_CONFIG_NAME, "hf_peft")  # fmt: skip
"""What an earlier run left in a folder that ``--overwrite_output_dir`` writes again, the results first: killed
part-way, the folder must not hold the old results beside the new run's files and look finished."""


def remove_old_outputs(output_dir: Path) -> None:
    for name in OLD_OUTPUTS:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            logger.info("--overwrite_output_dir: removing the earlier run's %s.", path)
            path.unlink()


def bytes_written(spec: RunSpec, model: torch.nn.Module) -> int:
    """About the most a run writes into its folder: the trained weights; a checkpoint (weights, the optimizer's two
    moments, the best evaluation) twice over while the latest replaces the one before; the tokenizer and logs."""
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    t = spec.training_args
    checkpoints = t.resumable or strategy_name(t.save_strategy) != "no"
    return 64 * 2**20 + (trained if t.save_model else 0) + (2 * 4 * trained if checkpoints else 0)


def prepare_all(ws: Workspace, argvs: list[list[str] | dict[str, Any]], keep_going: bool = False) -> list[Any]:
    """Parse and check every run (nothing loaded but data, configs and tokenizers) and plan the caches they read.
    With ``keep_going`` a run that fails its checks gives its exception in its place and the others go on."""
    specs: list[Any] = []
    for argv in argvs:
        try:
            specs.append(parse_args(argv))
        except PeftlabError as err:
            if not keep_going:
                raise
            specs.append(err)
    ok = [spec for spec in specs if isinstance(spec, RunSpec)]
    if ok:
        setup_logging(ok[0].training_args)
    folders = [spec.output_dir.resolve() for spec in ok]
    twice = sorted({str(f) for f in folders if folders.count(f) > 1})
    if twice:
        raise ConfigError(f"Several runs write the same --output_dir: {', '.join(twice)}. Give each its own.")
    for index, spec in enumerate(specs):
        if not isinstance(spec, RunSpec):
            continue
        try:
            prepare(ws, spec)
        except PeftlabError as err:
            if not keep_going:
                raise
            logger.error("Run %s is refused: %s", spec.output_dir, err)
            specs[index] = err
            continue
        if spec.cache_need is not None:
            ws.cache(spec).plan(spec.cache_need)
    return specs


def _history(output_dir: Path, event: str) -> None:
    """One line per start and end of the run in ``history.log``: a run done twice shows it."""
    with open(output_dir / "history.log", "a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {event} pid={os.getpid()} host={platform.node()}\n")


def run_many(
    argvs: list[list[str] | dict[str, Any]],
    ws: Workspace | None = None,
    *,
    keep_going: bool = False,
    records: list[dict[str, Any]] | None = None,
    skip_finished: bool = False,
) -> list[Any]:
    """Check every run, then run them one after another in this process, sharing a :class:`Workspace`.

    Returns each run's results. With ``keep_going`` a run that fails (or whose folder another process holds) gives
    its exception in its place and the others still run; without it the first failure is raised. ``records``: per
    run, JSON files to write into its folder once it holds the folder's lock. With ``skip_finished``, a run whose
    results exist when it takes the lock is left as it is (``"skipped"``).
    """
    ws = ws or Workspace()
    specs = prepare_all(ws, argvs, keep_going)  # 1. every check, before any model is loaded or anything is written
    gc.freeze()  # what is loaded now lives as long as the process: the Trainer's gc.collect() need not walk it
    outcomes: list[Any] = []
    for index, spec in enumerate(specs):  # 2. the runs
        if not isinstance(spec, RunSpec):  # refused by its checks (keep_going)
            outcomes.append(spec)
            continue
        if len(specs) > 1:
            logger.info("Run %d of %d: %s", index + 1, len(specs), spec.output_dir)
        first = spec.training_args.process_index == 0  # under torchrun, the first process writes the folder
        try:
            with output_lock(spec.output_dir) if first else nullcontext():
                if skip_finished and (spec.output_dir / RESULTS_NAME).is_file():
                    logger.info("%s is finished (by another process meanwhile): left as it is.", spec.output_dir)
                    outcomes.append("skipped")
                    continue
                with run_log(spec.output_dir) if first else nullcontext():
                    if first:
                        for name, content in (records[index] if records else {}).items():
                            write_json(spec.output_dir / name, content)
                        _history(spec.output_dir, "start")
                    outcomes.append(execute(ws, spec))
                    if first:
                        _history(spec.output_dir, "finish")
        except Exception as err:
            if not keep_going:
                gc.unfreeze()
                raise
            logger.exception("Run %s failed: %s", spec.output_dir, err)
            outcomes.append(err)
    gc.unfreeze()
    return outcomes


def fill_caches(argvs: list[list[str] | dict[str, Any]], ws: Workspace | None = None) -> int:
    """Compute (or find on disk) every frozen-prefix cache the runs read, in one pass per split, training nothing;
    returns the number of passes computed."""
    ws = ws or Workspace()
    for spec in prepare_all(ws, argvs):
        if spec.cache_need is None:
            continue
        features = ws.features(spec)
        tokenizer = ws.tokenizer(spec.tokenizer_path, spec.model_args)
        named = [features.train, *features.eval.values(), *(data for _, data in features.test.values())]
        for data in filter(None, named):
            ws.cache(spec).get(data, spec.cache_need, tokenizer)
    return ws.fill_passes()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one GLUE experiment and return its results (also written to ``all_results.json``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_many([argv])[0]


def cli(argv: list[str] | None = None) -> int:
    """``run_glue.py``: one run from flags or a JSON file, or several JSON files run in this process."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) > 1 and all(a.endswith(".json") for a in argv):
        outcomes = run_many([[a] for a in argv], keep_going=True)
        failed = [(a, o) for a, o in zip(argv, outcomes) if isinstance(o, BaseException)]
        for path, err in failed:
            print(f"error: {path}: {err}", file=sys.stderr)
        return 1 if failed else 0
    main(argv)
    return 0
