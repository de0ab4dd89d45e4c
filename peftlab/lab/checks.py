"""The checks of one run that need no model weights, and :func:`prepare`, which runs them all: a bad value fails
there, with one line naming it, before anything is loaded or written."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    PreTrainedTokenizerBase,
)

from peftlab.cache import default_cache_dir, need_of
from peftlab.checkpoints import (
    DATA_DIGEST,
    check_checkpoint_fits,
    complete_checkpoints,
    names_checkpoint,
    resolve_checkpoint,
    resume_arguments,
)
from peftlab.errors import ConfigError
from peftlab.glue.tasks import get_task
from peftlab.io import LOCK_NAME, check_writable, nearest_existing
from peftlab.lab.args import DataArguments, GlueTrainingArguments, ModelArguments
from peftlab.lab.autolayer import at_layer, check_auto, wants_auto
from peftlab.lab.parsing import Plan, RunSpec
from peftlab.lab.search import (
    check_study,
    parse_space,
    search_key,
)
from peftlab.lab.workspace import Workspace, base_model_of, head_config
from peftlab.methods import PeftArguments
from peftlab.modeling import (
    BUNDLED_MODEL,
    check_buildable,
    check_model_path,
    is_trained_run,
    read_model_config,
    resolve_model_path,
)

logger = logging.getLogger("peftlab")


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


def prepare(ws: Workspace, spec: RunSpec) -> Plan:
    """Every check of one run that needs no model weights: a bad value fails here, before anything is loaded or
    written. Loads (into ``ws``) the run's data, config and tokenizer, which the checks need anyway. Returns the
    run's :class:`~peftlab.lab.parsing.Plan`; ``spec`` is left as parsed."""
    plan = Plan.of(spec).resolved(glue_dir=check_options(spec))
    plan = plan.resolved(task=ws.run_data(plan).task)
    plan, config = resolve_model(ws, plan)
    plan, metas = check_methods(plan, config)
    plan = check_search(plan)
    return plan_resume(ws, plan, metas)


def check_options(spec: RunSpec) -> str | None:
    """The checks of the arguments alone and of the folders they name (nothing is loaded); the GLUE folder."""
    model_args, _, data_args, training_args = spec.parsed
    if data_args.task_name:
        get_task(data_args.task_name)  # an unknown name fails here
    elif data_args.train_file is None:
        raise ConfigError("Pass --task_name (one of the GLUE tasks) or --train_file with your own data.")
    glue_dir = resolve_glue_dir(data_args)
    check_output_dir(training_args, model_args)
    check_writable(spec.output_dir, "--output_dir")
    check_devices(training_args)
    check_model_dtype(model_args, training_args)
    try:
        check_model_path(model_args.model_name_or_path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_trained_run_options(spec)
    if training_args.cache_frozen_prefix and "cache_frozen_prefix" in spec.given:  # not given: on only where it can be
        check_cache_dir(training_args)
    return glue_dir


def resolve_model(ws: Workspace, plan: Plan) -> tuple[Plan, Any]:
    """The run's model and tokenizer paths; loads their config and tokenizer; the plan and the config."""
    model_args, data_args = plan.model_args, plan.data_args
    model_path = resolve_model_path(base_model_of(model_args))
    tokenizer_path = model_args.tokenizer_name or (
        model_args.model_name_or_path if is_trained_run(model_args.model_name_or_path) else model_path
    )
    try:
        config = ws.config(model_path, model_args)
        tokenizer = ws.tokenizer(tokenizer_path, model_args)
    except OSError as err:  # not a folder on disk, and not a model the hub (or its offline cache) has
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--model_name_or_path {model_path!r}: cannot load it ({first}). Give a local model folder, a "
            "trained run's --output_dir, or a hub name (offline, only models already in the hub cache load)."
        ) from None
    limit = max_length_of(tokenizer, config)
    if data_args.max_seq_length > limit:
        raise ConfigError(f"--max_seq_length {data_args.max_seq_length} exceeds the model's limit of {limit} tokens.")
    return plan.resolved(model_path=model_path, tokenizer_path=tokenizer_path), config


def check_methods(plan: Plan, config) -> tuple[Plan, list]:
    """Build the run's model (every candidate of an ``auto`` run) without weights, so that every method, layer and
    head check runs; the cache's need. Returns the plan and the weightless models (none for a trained run)."""
    model_args, peft_args, _, training_args = plan.parsed
    if is_trained_run(model_args.model_name_or_path):
        given = "cache_frozen_prefix" in plan.given and training_args.cache_frozen_prefix
        return plan.resolved({"cache_frozen_prefix": given}), []
    checked, candidates = [peft_args], None
    if wants_auto(peft_args.method, peft_args.target_layers):
        if not training_args.do_train:
            raise ConfigError("--target_layers auto chooses a layer by training: add --do_train.")
        layers = peft_args.num_hidden_layers or config.num_hidden_layers
        candidates = tuple(check_auto(peft_args.method, peft_args.target_layers, plan.auto_args.auto_layers, layers))
        checked = [dataclasses.replace(peft_args, method=at_layer(peft_args.method, k)) for k in candidates]
    try:
        head = head_config(model_args, plan.task.num_labels)
        metas = [check_buildable(config, head, p, model_args.model_dtype) for p in checked]
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if "cache_frozen_prefix" not in plan.given:
        plan = plan.resolved({"cache_frozen_prefix": cache_by_default(plan, metas)})
    need = need_of(metas[0]) if plan.training_args.cache_frozen_prefix and candidates is None else None
    return plan.resolved(auto_candidates=candidates, cache_need=need), metas


def cache_by_default(plan: Plan, metas: list) -> bool:
    """``--cache_frozen_prefix`` not given: on where the cache can serve the run, a training run (no search)
    whose every candidate model leaves layer 0 frozen, on an architecture and pooling the cache supports, with a
    usable cache folder; off otherwise, silently (the summary says which it was)."""
    if not plan.training_args.do_train or plan.search_args.hp_search:
        return False
    try:
        check_cache_dir(plan.training_args)
        return all(need_of(meta) is not None for meta in metas)
    except ConfigError:
        return False


def check_search(plan: Plan) -> Plan:
    """The search space of a ``--hp_search`` run, parsed against the arguments it may set; the selection metric
    ``main`` resolved to the task's."""
    training_args, space = plan.training_args, None
    if search := plan.search_args.hp_search:
        model_fields = {f.name for f in dataclasses.fields(PeftArguments)} | {"head_dropout"}
        training_fields = {f.name for f in dataclasses.fields(GlueTrainingArguments)}
        space = parse_space(plan.search_args.hp_space, training_fields, model_fields)
        if not training_args.do_eval:
            raise ConfigError(f"--hp_search {search} optimises the evaluation metric: add --do_eval.")
    if training_args.resumable and space is not None:
        raise ConfigError("--resumable resumes one training run; a --hp_search has many (drop --resumable).")
    metric = plan.task.main_metric if training_args.metric_for_best_model == "main" else None
    return plan.resolved({"metric_for_best_model": metric} if metric else None, space=space)


def plan_resume(ws: Workspace, plan: Plan, metas: list) -> Plan:
    """What a checkpoint of the run must share with it, and the checkpoint it resumes from (checked to fit)."""
    training_args = plan.training_args
    auto_args = [plan.auto_args] if plan.auto_candidates is not None else []  # its choice's settings too
    resume_args = resume_arguments(*plan.parsed, *auto_args)
    if training_args.do_train and (training_args.resumable or names_checkpoint(training_args.resume_from_checkpoint)):
        resume_args[DATA_DIGEST] = ws.data_digest(plan)  # a resumed run must train and evaluate on the same data
    key = ""
    if plan.space is not None:
        key = search_key(plan.space, resume_args)
        check_study(plan.search_args, plan.output_dir, key)
    checkpoint = resolve_checkpoint(training_args, resume_args)
    if checkpoint and metas and plan.auto_candidates is None:
        check_checkpoint_fits(checkpoint, metas[0], plan.model_args.model_name_or_path or BUNDLED_MODEL)
    return plan.resolved(
        {"resume_from_checkpoint": checkpoint}, resume_args=resume_args, search_key=key,
        resume_named=names_checkpoint(training_args.resume_from_checkpoint),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
