"""What the runs of one process share (:class:`Workspace`): each dataset read and tokenized once, each pretrained
model loaded once (every run trains its own copy, :func:`make_model`), the frozen-prefix caches filled once and
then kept in memory."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
)

from peftlab.cache import CachedCollator, FrozenPrefixCache, cache_datasets, default_cache_dir, need_of
from peftlab.errors import ConfigError
from peftlab.fastdropout import use_fast_dropout
from peftlab.glue.data import RunData, data_digest, load_run_data
from peftlab.glue.tasks import GlueTask, get_task
from peftlab.lab.args import ModelArguments
from peftlab.lab.parsing import Plan
from peftlab.methods import PeftArguments
from peftlab.modeling import (
    BUNDLED_MODEL,
    HeadConfig,
    SequenceClassifier,
    is_trained_run,
    load_backbone,
    load_classifier,
    read_model_config,
)

logger = logging.getLogger("peftlab")


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

    def run_data(self, plan: Plan) -> RunData:
        d, t = plan.data_args, plan.training_args
        task = get_task(d.task_name) if d.task_name else None  # None: the user's files
        key = (
            "data", d.task_name, plan.glue_dir, d.train_file, d.validation_file,
            d.test_file, t.do_train, t.do_eval, t.do_predict, d.train_split, d.split_dev, d.split_seed,
            d.max_train_samples, d.max_eval_samples, d.max_predict_samples, d.label_type,
        )  # fmt: skip
        return self._get(key, lambda: load_run_data(
            task, glue_dir=plan.glue_dir, train_file=d.train_file, validation_file=d.validation_file,
            test_file=d.test_file, do_train=t.do_train, do_eval=t.do_eval, do_predict=t.do_predict,
            train_split=d.train_split, split_dev=d.split_dev, split_seed=d.split_seed,
            max_train_samples=d.max_train_samples, max_eval_samples=d.max_eval_samples,
            max_predict_samples=d.max_predict_samples, label_type=d.label_type,
        ))  # fmt: skip

    def data_digest(self, plan: Plan) -> str:
        """The digest of the run's training and evaluation data (:func:`peftlab.glue.data.data_digest`)."""
        run_data = self.run_data(plan)
        return self._get(("digest", id(run_data)), lambda: data_digest(run_data))

    def config(self, path: str, model_args: ModelArguments):
        hub = self._hub(model_args)
        return self._get(("config", path, *hub.values()), lambda: AutoConfig.from_pretrained(path, **hub))

    def tokenizer(self, path: str, model_args: ModelArguments) -> PreTrainedTokenizerBase:
        hub = self._hub(model_args)
        return self._get(("tokenizer", path, *hub.values()), lambda: AutoTokenizer.from_pretrained(path, **hub))

    def features(self, plan: Plan) -> Features:
        run_data = self.run_data(plan)
        tokenizer = self.tokenizer(plan.tokenizer_path, plan.model_args)
        d = plan.data_args
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

    def backbone(self, plan: Plan) -> torch.nn.Module:
        """The pretrained backbone as loaded, shared by the runs (each trains a deep copy)."""
        hub, dtype = self._hub(plan.model_args), plan.model_args.model_dtype
        return self._get(
            ("backbone", plan.model_path, *hub.values(), dtype),
            lambda: load_backbone(plan.model_path, dtype, **hub).eval(),
        )

    def fill_passes(self) -> int:
        """Passes over a split that this workspace's frozen-prefix caches computed."""
        return sum(item.passes for key, item in self._items.items() if key[0] == "cache")

    def cache(self, plan: Plan) -> FrozenPrefixCache:
        t = plan.training_args
        directory = str(t.frozen_cache_dir or default_cache_dir())
        hub = self._hub(plan.model_args)
        return self._get(
            ("cache", plan.model_path, *hub.values(), plan.model_args.model_dtype, directory, t.cache_dtype),
            lambda: FrozenPrefixCache(self.backbone(plan), directory, t.cache_dtype),
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


def make_model(ws: Workspace, plan: Plan, peft_args: PeftArguments | None = None, model_args=None):
    """A fresh head and the run's methods on a copy of the pretrained backbone, or the classifier saved by an
    earlier run. Seeded by the caller: every random initial value comes from the run's seed."""
    model_args = model_args or plan.model_args
    model = _fresh_or_trained(ws, plan, peft_args, model_args)
    if model_args.fast_dropout:
        use_fast_dropout(model)
    return model


def _fresh_or_trained(ws: Workspace, plan: Plan, peft_args: PeftArguments | None, model_args):
    num_labels = plan.task.num_labels
    if is_trained_run(model_args.model_name_or_path):
        model = load_classifier(model_args.model_name_or_path, plan.training_args.cache_frozen_prefix)
        if model.num_labels != num_labels:
            raise ConfigError(
                f"{model_args.model_name_or_path} was trained with {model.num_labels} labels; this task has {num_labels}."
            )
        return model
    pristine = ws.backbone(plan)
    backbone = share_frozen_copy(pristine).train()
    base = model_args.model_name_or_path or BUNDLED_MODEL
    head, reads = head_config(model_args, num_labels), plan.training_args.cache_frozen_prefix
    model = SequenceClassifier(backbone, head, base, peft_args or plan.peft_args, reads)
    shared = {p.data_ptr() for p in pristine.parameters()}
    for param in model.parameters():  # what trains gets storage of its own; what stays frozen is shared
        if param.requires_grad and param.data_ptr() in shared:
            param.data = param.data.clone()
    return model


def share_frozen_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``backbone`` whose modules and parameter objects are its own but whose tensors share the
    original's storage (a copy of the structure only, not of every weight). Safe because
    a run never writes a frozen tensor: the optimizer sees only what trains (:func:`make_model` gives that its own
    storage) and LoRA's evaluation-time merge swaps in a new tensor instead of adding in place."""
    memo: dict[int, Any] = {id(t): t for t in backbone.buffers()}
    memo.update({id(p): torch.nn.Parameter(p.data, requires_grad=p.requires_grad) for p in backbone.parameters()})
    return copy.deepcopy(backbone, memo)


def with_cache(ws: Workspace, plan: Plan, model, named: dict[str, Any]):
    """``named`` datasets served from the frozen-prefix cache for ``model`` (built to read it), and the
    collator that pads them; or the datasets as they are and the plain collator when the run does not cache."""
    tokenizer = ws.tokenizer(plan.tokenizer_path, plan.model_args)
    if not plan.training_args.cache_frozen_prefix or need_of(model) is None:
        if plan.training_args.cache_frozen_prefix:
            logger.warning("--cache_frozen_prefix: layer 0 (or the embeddings) trains, so there is nothing to cache.")
        return named, None if plan.data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer)
    return cache_datasets(model, named, tokenizer, ws.cache(plan)), CachedCollator(tokenizer)


@dataclass
class RunSets:
    """The datasets a run's trainer reads (wrapped with their cached tensors under ``--cache_frozen_prefix``)."""

    train: Any
    eval: dict[str, Any]
    test: dict[str, Any]
    collator: Any


def run_sets(ws: Workspace, plan: Plan, model: SequenceClassifier) -> RunSets:
    """The run's tokenized datasets and collator; with a planned cache, each wrapped with what it reads."""
    features = ws.features(plan)
    named = {
        **({"train": features.train} if features.train is not None else {}),
        **{f"eval:{k}": v for k, v in features.eval.items()},
        **{f"test:{k}": data for k, (_, data) in features.test.items()},
    }
    wrapped, collator = with_cache(ws, plan, model, named)
    return RunSets(
        wrapped.get("train"),
        {k: wrapped[f"eval:{k}"] for k in features.eval},
        {k: wrapped[f"test:{k}"] for k in features.test},
        collator,
    )
