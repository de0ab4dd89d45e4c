"""The public API: put a method on a model you loaded yourself, train it with any loop, save and reload only
what trained.

    import peftlab, torch
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained("roberta-base")
    model = peftlab.classifier(backbone, "adapter@5", num_labels=2, pooling="mean", head="mlp", bottleneck_dim=2)
    optimizer = torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)
    ...                                     # any training loop: model(**batch, labels=y).loss.backward()
    peftlab.save(model, "my_run")           # the adapter and the head, not the frozen backbone
    model = peftlab.load("my_run")          # the same logits

:func:`inject` alone puts the method(s) on a backbone (``AutoModel``) or on a ``*ForSequenceClassification``
(its base model; its own head stays as it is and trainable). Options are the flat names ``peftlab methods
--options`` lists (``bottleneck_dim``, ``lora_rank`` ...). ``run_glue.py`` (``peftlab train``) builds its models
with these same functions.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from peftlab.errors import ConfigError
from peftlab.jsontypes import did_you_mean
from peftlab.methods import METHODS, Injection, Method, PeftArguments
from peftlab.methods import inject as inject_arguments
from peftlab.modeling import (
    BUNDLED_MODEL,
    WEIGHTS_NAME,
    HeadConfig,
    SequenceClassifier,
    load_backbone,
    load_classifier,
    resolve_model_path,
    save_model_config,
)


def peft_arguments(method: str, **options: Any) -> PeftArguments:
    """The options of ``method`` (``"adapter@5"``, ``"lora@all+bitfit"``), checked: an unknown name is refused
    with the closest valid one, a bad value with what is valid."""
    valid = {f.name for f in dataclasses.fields(PeftArguments) if f.init}
    for name in options:
        if name not in valid:
            raise ConfigError(f"Unknown method option {name!r}{did_you_mean(name, valid)}; `peftlab methods --options` lists them.")  # fmt: skip
    return PeftArguments(method=method, **options)


def _backbone_of(model: nn.Module) -> nn.Module:
    """The encoder or decoder stack of ``model``: itself for an ``AutoModel``, the base model of a model with a
    task head (``BertForSequenceClassification.bert``)."""
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def inject(model: nn.Module, method: str, **options: Any) -> Injection:
    """Freeze ``model``'s backbone (unless ``method`` is ``full``) and put ``method`` on it, in place; returns what
    was injected (methods, layers, the modules adapted, the number of parameters added or unfrozen). Every check
    runs before anything is modified: a refused method leaves the model as it was."""
    return inject_arguments(_backbone_of(model), peft_arguments(method, **options))


def classifier(
    backbone: nn.Module | str | None,
    method: str = "full",
    *,
    num_labels: int = 2,
    pooling: str = "pooler",
    head: str = "linear",
    head_dropout: float | None = None,
    reads_cache: bool = False,
    **options: Any,
) -> SequenceClassifier:
    """A sequence classifier: ``backbone`` (an ``AutoModel`` you loaded, or a hub name or folder to load; ``None``:
    the bundled MiniLM) with ``method`` injected, pooled (``cls``, ``mean``, ``pooler``, ``last``) into a fresh
    head (``linear``, ``mlp``, ``score``). Regression when ``num_labels`` is 1. ``backbone`` is modified in place.
    With ``reads_cache`` the model reads the frozen-prefix cache (:func:`peftlab.cache_datasets`): the layers below
    its lowest trained one are skipped when their cached output is given."""
    peft_args = peft_arguments(method, **options)  # a bad option fails before any weight is loaded
    if isinstance(backbone, nn.Module):
        name = getattr(backbone.config, "_name_or_path", "")  # what load() reloads it from ("": built from a config)
    else:
        name = backbone or BUNDLED_MODEL
        backbone = load_backbone(resolve_model_path(backbone))
    if name == resolve_model_path(None):
        name = BUNDLED_MODEL  # the bundled model by its portable name, not its folder on this machine
    head_config = HeadConfig(num_labels=num_labels, pooling=pooling, head=head, dropout=head_dropout)
    return SequenceClassifier(backbone, head_config, name, peft_args, reads_cache)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What trained: the parameters with ``requires_grad`` (method and head), by their names in ``model``; the whole
    state dict of a model that trains everything."""
    if isinstance(model, SequenceClassifier):
        return model.trainable_state_dict()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: t for name, t in model.state_dict().items() if name in trainable}


def save(model: SequenceClassifier, directory: str | os.PathLike) -> Path:
    """Save what ``model`` trained and how to rebuild it around its base model (``peftlab_model.json``), in the
    layout of a ``run_glue.py`` output folder: :func:`load` and ``--model_name_or_path`` both read it."""
    if not isinstance(model, SequenceClassifier):
        raise TypeError(f"peftlab.save takes a model from peftlab.classifier, not a {type(model).__name__}.")
    if not model.base_model:
        raise ValueError(
            "peftlab.save: the backbone was built from a config, not loaded from a name or folder, so nothing could "
            "reload its frozen weights. Save it first (backbone.save_pretrained(folder)) and build the classifier "
            "from AutoModel.from_pretrained(folder)."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in trainable_state_dict(model).items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    save_model_config(directory, **model.export_config())
    return directory


def load(directory: str | os.PathLike) -> SequenceClassifier:
    """The classifier saved in ``directory`` (by :func:`save` or a training run), its base model loaded first, in
    eval mode (``.train()`` to train it further)."""
    return load_classifier(directory)


def model_path(name: str | None = None) -> str:
    """The folder of the bundled all-MiniLM-L6-v2 (``name`` ``None``), or ``name`` unchanged (a hub name or folder)."""
    return resolve_model_path(name)


def available_methods() -> dict[str, type[Method]]:
    """The registered methods by ``--method`` name; each class's ``options_class`` holds its options."""
    return dict(METHODS)
