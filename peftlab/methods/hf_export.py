"""What a method's export in HuggingFace ``peft``'s format (``<output_dir>/hf_peft``) carries besides the method's
own weights: the classification head, a base model ``peft`` can load, and a README saying how to load it.

The method's weights alone give the backbone's hidden states. Where the run's pooling and head compute exactly
what the architecture's own ``*ForSequenceClassification`` head computes, the export carries that head too, in
``peft``'s ``modules_to_save`` form, with ``task_type`` ``SEQ_CLS``, and the method's weights are named as in that
class (``bert.encoder...``): ``peft.AutoPeftModelForSequenceClassification.from_pretrained(run/hf_peft)`` then gives
the run's own logits. The combinations that export whole (:data:`FAMILIES`):

- BERT (``BertForSequenceClassification``: its pooler, dense + tanh on the first token, then a linear
  ``classifier``): ``--pooling pooler --head linear``, and ``--pooling cls --head mlp`` (our dense + tanh is the
  pooler's computation; dropout does nothing at inference);
- RoBERTa, XLM-RoBERTa, MPNet (``classifier.dense`` + tanh + ``classifier.out_proj`` on the first token): the same
  two;
- DeBERTa-v2 (``pooler.dense`` + the config's ``pooler_hidden_act`` + ``classifier``): ``--pooling cls --head mlp``
  where ``pooler_hidden_act`` is ``tanh``;
- the decoders (``score``, a bias-free linear layer read at the last non-padding token): ``--pooling last`` (or
  ``pooler``, which means ``last`` there) ``--head score``;
- ELECTRA (dense + GELU) and DistilBERT (``pre_classifier`` + ReLU): none; our heads use tanh.

Any other combination (``--pooling mean``, which no transformers class computes, for one) exports the adapter
alone, named as in the ``AutoModel``, with ``task_type`` null; its README says why the head is not there, and a
warning is logged. ``peft`` saves a ``modules_to_save`` module's weights under the module's own name, without the
adapter name: ``base_model.model.classifier.weight``, not ``...classifier.modules_to_save.default.weight`` (its
loader puts the adapter name back).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

logger = logging.getLogger("peftlab")

PEFT_PREFIX = "base_model.model."
"""What ``peft`` puts before a module's name in ``adapter_model.safetensors``."""
NOTES_NAME = "peftlab_export.json"
"""The export's notes for programs: whether the head is included (and why not), the keyword arguments to load with."""


@dataclass(frozen=True)
class Family:
    """The head of one architecture family's ``*ForSequenceClassification`` and how ours maps onto it."""

    theirs: str
    """What their head computes, for messages."""
    whole: str
    """Our pooling/head combinations that compute it, for messages."""
    wrapped: tuple[str, ...] = ()
    """The modules of their class that hold the head (``{p}``: the backbone's attribute and a dot), which ``peft``
    wraps as ``modules_to_save``; empty where nothing of ours maps."""
    dense: str | None = None
    """Their dense layer that precedes a tanh; ``None``: their head is one linear layer."""
    out: str = ""
    """Their last linear layer."""
    activation: str | None = None
    """Config attribute naming their activation after ``dense``, which must be ``tanh``; ``None``: always tanh."""


_BERT_LIKE = "`--pooling pooler --head linear` and `--pooling cls --head mlp`"
_NONE = "none (our heads use tanh)"
_ROBERTA = Family(
    theirs="`classifier`: dense + tanh on the first token, then `out_proj`",
    whole=_BERT_LIKE,
    wrapped=("classifier",),
    dense="classifier.dense",
    out="classifier.out_proj",
)
_SCORE = Family(
    theirs="`score` (a bias-free linear layer) at the last non-padding token",
    whole="`--pooling last --head score`",
    wrapped=("score",),
    out="score",
)
FAMILIES: dict[str, Family] = {
    "bert": Family(
        theirs="its pooler (dense + tanh on the first token), then a linear `classifier`",
        whole=_BERT_LIKE,
        wrapped=("{p}pooler", "classifier"),
        dense="{p}pooler.dense",
        out="classifier",
    ),
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "mpnet": _ROBERTA,
    "deberta-v2": Family(
        theirs="its pooler (dense + `pooler_hidden_act` on the first token), then a linear `classifier`",
        whole="`--pooling cls --head mlp`, where the config's `pooler_hidden_act` is tanh",
        wrapped=("pooler", "classifier"),
        dense="pooler.dense",
        out="classifier",
        activation="pooler_hidden_act",
    ),
    "electra": Family(theirs="dense + GELU on the first token, then `out_proj`", whole=_NONE),
    "distilbert": Family(theirs="`pre_classifier` + ReLU on the first token, then `classifier`", whole=_NONE),
    **dict.fromkeys(("llama", "mistral", "qwen2", "gemma", "gemma2", "gpt2"), _SCORE),
}
"""By ``model_type``: the architecture's own sequence classification head, and what of ours exports onto it."""


@dataclass
class HeadExport:
    """The run's head as the architecture's ``*ForSequenceClassification`` holds it."""

    class_name: str
    backbone_prefix: str
    """Where the backbone sits in that class, with a dot (``bert.``): the method's modules are named below it."""
    modules_to_save: list[str]
    tensors: dict[str, torch.Tensor]
    """The head's weights, named as ``peft`` saves them (:data:`PEFT_PREFIX` + the module path + the parameter)."""


def resolvable_base(name_or_path: str | None) -> str | None:
    """The ``base_model_name_or_path`` an export records: a local folder (the bundled model's included) by its
    absolute path, so that ``peft`` loads it offline from anywhere; a hub name as it is; ``None`` for a backbone
    built from a config, which nothing can reload by name."""
    if not name_or_path:
        return None
    from peftlab.modeling import resolve_model_path  # lazily: peftlab.modeling imports the methods

    path = resolve_model_path(name_or_path)
    return str(Path(path).resolve()) if Path(path).is_dir() else path


def write_adapter(
    output_dir: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor], head: HeadExport | None
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors``: the method's ``config`` and ``tensors``
    (named below ``head.backbone_prefix`` where a head is given), its base model made resolvable, and the head."""
    output_dir = Path(output_dir)
    config = {**config, "base_model_name_or_path": resolvable_base(config.get("base_model_name_or_path"))}
    tensors = dict(tensors)
    if head is not None:
        config.update(task_type="SEQ_CLS", modules_to_save=head.modules_to_save)
        tensors.update(head.tensors)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(output_dir / "adapter_model.safetensors"))
    return output_dir


def head_export(model: nn.Module) -> tuple[HeadExport | None, str]:
    """The head of ``model`` (a :class:`~peftlab.modeling.SequenceClassifier`) as its architecture's
    ``*ForSequenceClassification`` holds it, or ``None`` and why it does not map onto that class."""
    config, head_config = model.backbone.config, model.head_config
    family = FAMILIES.get(config.model_type)
    asked = f"--pooling {head_config.pooling} --head {head_config.head}"
    if family is None:
        return None, f"peftlab maps no transformers sequence classifier's head for {config.model_type}"
    layers = model.peft_args.num_hidden_layers
    if layers is not None:
        return None, (
            f"the run kept only the first {layers} layers of the backbone (--num_hidden_layers {layers}); "
            f"the base model's classes build all of them (load it with num_hidden_layers={layers})"
        )
    sources = _our_layers(model, family)
    if sources is None:
        activation = getattr(config, family.activation, None) if family.activation else "tanh"
        its = f", and this config's {family.activation} is {activation!r}" if activation != "tanh" else ""
        return None, (
            f"`{asked}` does not compute what transformers' {config.model_type} sequence classifier does "
            f"({family.theirs}{its}); exported whole on {config.model_type}: {family.whole}"
        )
    return _checked(model, family, sources)


def _our_layers(model: nn.Module, family: Family) -> dict[str, nn.Linear] | None:
    """Their head's linear layers (by path) -> ours that compute them, or ``None`` where ours computes otherwise."""
    kind, pooling, backbone = model.head_config.head, model.pooling, model.backbone
    pooler = getattr(backbone, "pooler", None)
    if not family.wrapped:
        return None
    if family.dense is None:
        return {family.out: model.head.out_proj} if (pooling, kind) == ("last", "score") else None
    if family.activation is not None and getattr(backbone.config, family.activation, None) != "tanh":
        return None
    if (pooling, kind) == ("cls", "mlp"):
        dense = model.head.dense
    elif (pooling, kind) == ("pooler", "linear") and isinstance(getattr(pooler, "activation", None), nn.Tanh):
        dense = pooler.dense
    else:
        return None
    return {family.dense: dense, family.out: model.head.out_proj}


def _checked(model: nn.Module, family: Family, sources: dict[str, nn.Linear]) -> tuple[HeadExport | None, str]:
    """The head's tensors, named and shaped as in the architecture's ``AutoModelForSequenceClassification``
    (built without weights, on the meta device, to see its names): the wrapped modules must hold exactly them."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.backbone.config)
    config.num_labels = model.num_labels
    with torch.device("meta"):
        theirs = AutoModelForSequenceClassification.from_config(config)
    shapes = {name: tuple(t.shape) for name, t in theirs.state_dict().items()}
    prefix = f"{theirs.base_model_prefix}."
    tensors = {
        f"{path.format(p=prefix)}.{name}": param.detach().cpu().contiguous()
        for path, linear in sources.items()
        for name, param in linear.named_parameters()
    }
    wrapped = [path.format(p=prefix) for path in family.wrapped]
    expected = {name: shape for name, shape in shapes.items() if any(name.startswith(f"{w}.") for w in wrapped)}
    if expected != {name: tuple(t.shape) for name, t in tensors.items()}:  # pragma: no cover - a transformers change
        return (
            None,
            f"{type(theirs).__name__}'s head ({sorted(expected)}) does not hold what ours has ({sorted(tensors)})",
        )
    tensors = {PEFT_PREFIX + name: t for name, t in tensors.items()}
    modules = [w.rsplit(".", 1)[-1] for w in wrapped]
    return HeadExport(type(theirs).__name__, prefix, modules, tensors), ""


ExportFunction = Callable[..., Path]
"""A method's ``export_peft(backbone, output_dir, base_model_name_or_path, head=...)``."""


def export_classifier(model: nn.Module, output_dir: str | os.PathLike, export: ExportFunction, method: str) -> Path:
    """Write ``model``'s method with ``export`` (the method's ``export_peft``) into ``output_dir``, with its head
    where that maps onto the architecture's own class (:func:`head_export`), and a README and notes saying how to
    load it, or why the head is not included (which is also logged as a warning)."""
    head, reason = head_export(model)
    path = export(model.backbone, output_dir, model.base_model, head=head)
    base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    kwargs = load_kwargs(model, head)
    notes = {
        "method": method,
        "base_model_name_or_path": base,
        "pooling": model.head_config.pooling,
        "head": model.head_config.head,
        "num_labels": model.num_labels,
        "head_included": head is not None,
        "head_not_included_because": reason or None,
        "sequence_classification_class": head.class_name if head is not None else None,
        "load_kwargs": kwargs,
    }
    (path / NOTES_NAME).write_text(json.dumps(notes, indent=2) + "\n")
    (path / "README.md").write_text(readme(notes, model))
    if head is None:
        logger.warning(
            "%s holds the %s weights without the classification head, which is not included: %s. It gives the "
            "backbone's hidden states; the run's predictions come from peftlab.load(%s).",
            *(path, method, reason, Path(output_dir).parent),
        )
    if base is None:
        logger.warning("%s: the backbone was built from a config, so base_model_name_or_path is null.", path)
    return path


def load_kwargs(model: nn.Module, head: HeadExport | None) -> dict[str, Any]:
    """The keyword arguments that make ``from_pretrained`` of the base build the run's head: ``num_labels`` (the
    base's config says 2 unless it says otherwise, and ``peft`` passes no label count on), and on a decoder whose
    config has no ``pad_token_id`` a reminder to give the tokenizer's (its head finds the last token by it)."""
    if head is None:
        return {}
    kwargs: dict[str, Any] = {"num_labels": model.num_labels}
    if model.architecture.causal and model.backbone.config.pad_token_id is None:
        kwargs["pad_token_id"] = "<tokenizer.pad_token_id>"
    return kwargs


def readme(notes: dict[str, Any], model: nn.Module) -> str:
    """The export's README: what it holds and how to load it."""
    base, method = notes["base_model_name_or_path"], notes["method"]
    asked = f"`--pooling {notes['pooling']} --head {notes['head']}`"
    given = f" (the run named it `{model.base_model}`)" if base is not None and base != model.base_model else ""
    lines = [f"# {method} weights in HuggingFace peft's format", "", f"Base model: `{base}`{given}.", ""]
    if notes["head_included"]:
        given = {
            k: "tokenizer.pad_token_id" if k == "pad_token_id" else repr(v) for k, v in notes["load_kwargs"].items()
        }
        args = ", ".join(f"{k}={v}" for k, v in given.items())
        lines += [
            f"The classification head is included: {asked} is {notes['sequence_classification_class']}'s own head, "
            "saved as peft's `modules_to_save` (task_type SEQ_CLS). The run's logits:",
            "",
            "    from peft import AutoPeftModelForSequenceClassification",
            f"    model = AutoPeftModelForSequenceClassification.from_pretrained(folder, {args}).eval()",
            "",
            "or `PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, "
            f"{args}), folder)`. `num_labels` must be given where the base's config says another number "
            "(peft passes none on).",
        ]
        if model.architecture.causal:
            lines += [
                "",
                "Decoders: transformers reads the last token whose id is not `pad_token_id`, the run read the "
                "attention mask: the same for right-padded batches unless the pad token also occurs in the text (a "
                "tokenizer that pads with the end-of-sequence token it also ends each text with).",
            ]
    else:
        lines += [
            f"The classification head is NOT included: {notes['head_not_included_because']}. These weights give the "
            "backbone's hidden states: `PeftModel.from_pretrained(AutoModel.from_pretrained(base), folder)`. "
            "The run's predictions come from `peftlab.load(run folder)`.",
            "",
            "Combinations that export whole: BERT, RoBERTa, XLM-RoBERTa, MPNet: `--pooling pooler --head linear` or "
            "`--pooling cls --head mlp`; DeBERTa-v2: `--pooling cls --head mlp` where `pooler_hidden_act` is tanh; "
            "decoders: `--pooling last --head score`.",
        ]
    if base is None:
        lines += ["", "The backbone was built from a config: give the base model yourself."]
    return "\n".join(lines) + "\n"
