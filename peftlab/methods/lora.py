"""LoRA: a trainable low-rank update ``B @ A`` added to frozen linear layers.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022. https://arxiv.org/abs/2106.09685

::

    x ──► base_layer (frozen W) ───────────────────────┐
    │                                                   (+) ──► y = W x + (alpha / r) · B A dropout(x)
    └──► dropout ──► A (r × in) ──► B (out × r) ──► ·s ─┘

``B`` starts at zero, so a fresh LoRA model computes exactly what the base model does. ``merge()`` folds the
update into ``W`` (no extra work at inference), ``unmerge()`` takes it out again. Initialisation and parameter
names follow HuggingFace ``peft`` so that weights export to its format (see :func:`export_peft`).

The base layer is an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2's linear layers, weight stored transposed:
``in x out``); for the latter the update is added transposed when merged, and the export says
``fan_in_fan_out``, as peft does. On GPT-2, query, key and value are one fused layer: target the role ``qkv``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from peftlab.architectures import LINEAR_ROLES, Architecture, linear_shape
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, TunerLayer, check_choices, check_positive, parse_roles, register
from peftlab.methods.hf_export import PEFT_PREFIX, HeadExport, export_classifier, write_adapter


@dataclass
class LoraOptions:
    """Options of ``--method lora``."""

    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_init: str = field(
        default="kaiming",
        metadata={
            "help": "Initialisation of A (B starts at zero): kaiming (HF peft's default) or normal (N(0, 1), as the "
            "paper's code)."
        },
    )
    lora_targets: str = field(
        default="query,value",
        metadata={
            "help": f"Comma-separated linear roles LoRA adapts ('all': every one the architecture has): "
            f"{', '.join(LINEAR_ROLES)} (qkv: GPT-2's fused query/key/value)."
        },
    )

    def __post_init__(self) -> None:
        check_choices(self, {"lora_init": ("kaiming", "normal")})
        check_positive(self, "lora_rank")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora_dropout {self.lora_dropout} must be in [0, 1).")
        parse_roles(self.lora_targets, "lora_targets", LINEAR_ROLES)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


class LoraLinear(TunerLayer):
    """``base_layer`` plus a scaled low-rank update."""

    def __init__(
        self, base_layer: nn.Module, rank: int, alpha: float, dropout: float = 0.0, init: str = "kaiming"
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / rank
        self.fan_in_fan_out = _is_conv1d(base_layer)
        in_features, out_features = linear_shape(base_layer)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        if init == "normal":
            nn.init.normal_(self.lora_A.weight)
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self._unmerged_weight: torch.Tensor | None = None

    @property
    def merged(self) -> bool:
        return self._unmerged_weight is not None

    def delta_weight(self) -> torch.Tensor:
        """The update in the base layer's weight layout (``out x in``, or ``in x out`` for a Conv1D)."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return delta.t() if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Put ``W + update`` in place of the base weight (idempotent); the original tensor is kept for
        :meth:`unmerge`. The merged weight is a new tensor: the original is never written to, so a base weight
        shared with other models (runs of one process share the frozen backbone) is never seen modified."""
        if not self.merged:
            weight = self.base_layer.weight
            self._unmerged_weight = weight.data
            weight.data = weight.data + self.delta_weight().to(weight.dtype)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original base weight tensor, bit for bit (subtracting the update would not be exact)."""
        if self.merged:
            self.base_layer.weight.data = self._unmerged_weight
            self._unmerged_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        # out + s * B(A(x)) as one GEMM that accumulates into the base output (no separate scale and add passes
        # over the (tokens x out_features) result, forward or backward).
        low = self.lora_A(self.lora_dropout(x)).reshape(-1, self.rank)
        flat = out.reshape(-1, out.shape[-1])
        return torch.addmm(flat, low, self.lora_B.weight.t(), alpha=self.scaling).view(out.shape)


@register
class Lora(Method):
    """LoRA (Hu et al. 2022): a trained low-rank update beside the chosen linear layers."""

    name = "lora"
    options_class = LoraOptions
    order = 0  # wraps the plain nn.Linear, before adapters wrap whatever is there
    paper_learning_rate = 2e-3  # lora_hyper.sh:24,41,54,55
    paper_options = MappingProxyType({
        "lora_rank": 1,  # lora_hyper.sh:56
        "lora_alpha": 1.0,  # no alpha / r scaling: models/lora.py:22-23,29-31
        "lora_targets": "query,key",  # modeling_lora_roberta.py:167-171
        "lora_init": "normal",  # lora_down ~ N(0, 1): models/lora.py:25-28
        "lora_dropout": 0.0,  # none: models/lora.py:22-23
    })  # fmt: skip

    def targets(self, backbone: nn.Module, arch: Architecture) -> list[tuple[int, str]]:
        explicit = self.options.lora_targets.strip() != "all"
        roles = parse_roles(self.options.lora_targets, "lora_targets", LINEAR_ROLES)
        return self.resolve(backbone, arch, roles, "lora_targets", explicit)

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        for layer, role in self.targets(backbone, arch):
            module = self.module(backbone, arch, layer, role)
            if not isinstance(module, nn.Linear) and not _is_conv1d(module):
                raise ConfigError(
                    f"LoRA needs nn.Linear (or Conv1D) at {role} of layer {layer}; found {type(module).__name__}."
                )

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        o = self.options
        for layer, role in self.targets(backbone, arch):
            path = self.path(arch, layer, role)
            base = backbone.get_submodule(path)
            self.replace(backbone, path, LoraLinear(base, o.lora_rank, o.lora_alpha, o.lora_dropout, o.lora_init))
        return []

    @contextmanager
    def merged_for_eval(self, backbone: nn.Module) -> Iterator[None]:
        """Evaluate with LoRA folded into the base weights (one matmul per layer instead of three)."""
        with lora_merged(backbone):
            yield

    def export(self, model: nn.Module, output_dir: Path) -> Path | None:
        """``<output_dir>/hf_peft`` in HuggingFace peft's format, when LoRA is the run's only method (peft's
        format has no place for the others)."""
        if [name for name, _ in model.injection.methods] != [self.name]:
            return None
        return export_classifier(model, Path(output_dir) / "hf_peft", export_peft, "LoRA")


def set_lora_merged(model: nn.Module, merged: bool) -> None:
    """Merge (or unmerge) every LoRA layer of ``model``."""
    for module in model.modules():
        if isinstance(module, LoraLinear):
            module.merge() if merged else module.unmerge()


@contextmanager
def lora_merged(model: nn.Module) -> Iterator[None]:
    """Evaluate with LoRA folded into the base weights (one matmul per layer instead of three), then restore."""
    set_lora_merged(model, True)
    try:
        yield
    finally:
        set_lora_merged(model, False)


def export_peft(
    backbone: nn.Module,
    output_dir: str | os.PathLike,
    base_model_name_or_path: str | None,
    head: HeadExport | None = None,
) -> Path:
    """Write the backbone's LoRA weights in HuggingFace ``peft`` format (adapter_config.json + safetensors).

    ``peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), output_dir)`` then computes the same
    hidden states as this backbone. Only LoRA is exported (one rank and alpha for the whole model, as peft wants).
    With ``head`` (:func:`~peftlab.methods.hf_export.head_export`) the modules are named as in the architecture's
    ``*ForSequenceClassification`` and the head goes with them: load it with that class instead.
    """
    prefix = head.backbone_prefix if head is not None else ""
    tensors, targets, layers, ranks, alphas, fan_in_fan_out = {}, set(), set(), set(), set(), set()
    names = []
    for name, module in backbone.named_modules():
        if isinstance(module, LoraLinear):
            name = prefix + name
            names.append(name)
            for part in ("lora_A", "lora_B"):
                tensors[f"{PEFT_PREFIX}{name}.{part}.weight"] = getattr(module, part).weight.detach().cpu().contiguous()
            targets.add(name.rsplit(".", 1)[-1])
            layers.update(int(p) for p in name.split(".") if p.isdigit())
            ranks.add(module.rank)
            alphas.add(module.scaling * module.rank)
            fan_in_fan_out.add(module.fan_in_fan_out)
    if not tensors:
        raise ConfigError("The model has no LoRA layers to export.")
    if len(ranks) != 1 or len(alphas) != 1 or len(fan_in_fan_out) != 1:
        raise ConfigError(f"peft's format needs one rank and alpha; found ranks {ranks}, alphas {alphas}.")
    target_modules: list[str] | str = sorted(targets)
    layers_to_transform: list[int] | None = sorted(layers)
    if head is not None or any(name.split(".")[1].isdigit() for name in names):
        # A layer list at the top of the model (Llama's "layers.0...", GPT-2's "h.0..."): peft's
        # layers_to_transform pattern wants a parent before it, so name the modules exactly (peft full-matches a
        # regex string against each module's name). With the head, exactly too: a suffix ("dense") would also
        # match the head's own layers (RoBERTa's classifier.dense).
        target_modules = "^(?:" + "|".join(re.escape(name) for name in sorted(names)) + ")$"
        layers_to_transform = None
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": ranks.pop(),
        "lora_alpha": alphas.pop(),
        "lora_dropout": 0.0,
        "target_modules": target_modules,
        "layers_to_transform": layers_to_transform,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out.pop(),
        "inference_mode": True,
    }
    return write_adapter(output_dir, config, tensors, head)
