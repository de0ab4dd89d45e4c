"""(IA)^3: learned vectors that rescale the keys, the values and the FFN's inner activation.

Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", NeurIPS 2022.
https://arxiv.org/abs/2205.05638

::

    key, value:  x ──► base_layer (frozen) ──► ⊙ l ──► y = l ⊙ (W x + b)             (l: out_features)
    ffn_out:     a ──► ⊙ l ──► base_layer (frozen) ──► y = W (l ⊙ a) + b               (l: in_features)

``ffn_out``'s vector scales its *input*, the FFN's inner activation (``act(W_in x)``; in a gated FFN the product
of the gate and up-projection), as the paper's ``l_ff ⊙ γ(W_1 x)`` and HuggingFace ``peft``'s
``feedforward_modules``; every other role named in ``--ia3_targets`` is scaled at its output. Every vector starts
at ones, so a fresh model computes exactly what the base model does. The parameter is named ``ia3_l`` as in
``peft``, so that the vectors export to its format (:func:`export_peft`, which reshapes them to peft's ``(out, 1)``
for an output scale and ``(1, in)`` for an input scale).

The base layer is an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2; its layout does not matter, nothing is
merged). On GPT-2, query, key and value are one fused layer: ``qkv`` scales all three outputs (the paper leaves
queries alone; peft targeting ``c_attn`` scales all three as well).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from peftlab.architectures import LINEAR_ROLES, Architecture, linear_shape
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, TunerLayer, innermost_linear, parse_roles, register
from peftlab.methods.hf_export import PEFT_PREFIX, HeadExport, export_classifier, write_adapter

INPUT_SCALED_ROLES = ("ffn_out",)
"""Roles whose vector scales the layer's input (the FFN's inner activation), not its output."""


@dataclass
class IA3Options:
    """Options of ``--method ia3``."""

    ia3_targets: str = field(
        default="key,value,ffn_out",
        metadata={
            "help": f"Comma-separated linear roles (IA)^3 rescales ('all': every one the architecture has): "
            f"{', '.join(LINEAR_ROLES)}. ffn_out is scaled at its input (the FFN's inner activation, as the paper "
            f"and peft's feedforward_modules), the others at their output (qkv: GPT-2's fused query/key/value)."
        },
    )

    def __post_init__(self) -> None:
        parse_roles(self.ia3_targets, "ia3_targets", LINEAR_ROLES)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


class IA3Linear(TunerLayer):
    """``base_layer`` with a learned elementwise scale on its output, or (``scale_input``) on its input."""

    def __init__(self, base_layer: nn.Module, scale_input: bool) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scale_input = scale_input
        linear = innermost_linear(base_layer)
        in_features, out_features = linear_shape(linear)
        self.fan_in_fan_out = _is_conv1d(linear)
        self.ia3_l = nn.Parameter(torch.ones(in_features if scale_input else out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_input:  # the product in the vector's dtype, then back to the activations' (as peft)
            return self.base_layer((x * self.ia3_l).to(x.dtype))
        out = self.base_layer(x)
        return (out * self.ia3_l).to(out.dtype)


@register
class IA3(Method):
    """(IA)^3 (Liu et al. 2022): vectors rescaling keys, values and the FFN's inner activation, initialised to ones."""

    name = "ia3"
    options_class = IA3Options
    order = 2  # wraps whatever LoRA (0) and VeRA (1) left there, so it rescales their output too
    # Ours: the paper has no (IA)^3. The rate (IA)^3's paper trains T-Few with (3e-3), untuned here; its own
    # placement (keys, values, the FFN's inner activation).
    paper_learning_rate = 3e-3
    paper_options = MappingProxyType({"ia3_targets": "key,value,ffn_out"})
    paper_ours = ("learning_rate", "options")

    def targets(self, backbone: nn.Module, arch: Architecture) -> list[tuple[int, str]]:
        explicit = self.options.ia3_targets.strip() != "all"
        roles = parse_roles(self.options.ia3_targets, "ia3_targets", LINEAR_ROLES)
        return self.resolve(backbone, arch, roles, "ia3_targets", explicit)

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        for layer, role in self.targets(backbone, arch):
            module = innermost_linear(self.module(backbone, arch, layer, role))
            if not isinstance(module, nn.Linear) and not _is_conv1d(module):
                raise ConfigError(
                    f"ia3 needs nn.Linear (or Conv1D) at {role} of layer {layer}; found {type(module).__name__}."
                )

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        for layer, role in self.targets(backbone, arch):
            path = self.path(arch, layer, role)
            self.replace(backbone, path, IA3Linear(backbone.get_submodule(path), role in INPUT_SCALED_ROLES))
        return []

    def export(self, model: nn.Module, output_dir: Path) -> Path | None:
        """``<output_dir>/hf_peft`` in HuggingFace peft's format, when (IA)^3 is the run's only method (peft's
        format has no place for the others)."""
        if [name for name, _ in model.injection.methods] != [self.name]:
            return None
        return export_classifier(model, Path(output_dir) / "hf_peft", export_peft, "(IA)^3")


def _exactly(names: list[str]) -> str:
    """A regex that peft full-matches against module names: exactly these (a suffix list would be ambiguous, as
    BERT's ``output.dense`` is also the end of ``attention.output.dense``)."""
    return "^(?:" + "|".join(re.escape(name) for name in sorted(names)) + ")$"


def export_peft(
    backbone: nn.Module,
    output_dir: str | os.PathLike,
    base_model_name_or_path: str | None,
    head: HeadExport | None = None,
) -> Path:
    """Write the backbone's (IA)^3 vectors in HuggingFace ``peft`` format (adapter_config.json + safetensors).

    ``peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), output_dir)`` then computes the same hidden
    states as this backbone. The input-scaled layers are peft's ``feedforward_modules``. With ``head``
    (:func:`~peftlab.methods.hf_export.head_export`) the modules are named as in the architecture's
    ``*ForSequenceClassification`` and the head goes with them: load it with that class instead.
    """
    prefix = head.backbone_prefix if head is not None else ""
    tensors, names, feedforward, fan_in_fan_out = {}, [], [], set()
    for name, module in backbone.named_modules():
        if isinstance(module, IA3Linear):
            name = prefix + name
            names.append(name)
            shape = (1, -1) if module.scale_input else (-1, 1)
            tensors[f"{PEFT_PREFIX}{name}.ia3_l"] = module.ia3_l.detach().cpu().reshape(shape).contiguous()
            if module.scale_input:
                feedforward.append(name)
            fan_in_fan_out.add(module.fan_in_fan_out)
    if not tensors:
        raise ConfigError("The model has no (IA)^3 layers to export.")
    config = {
        "peft_type": "IA3",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "target_modules": _exactly(names),
        # An empty list, not null: peft fills a null from its own table of "feedforward" modules per model type.
        "feedforward_modules": _exactly(feedforward) if feedforward else [],
        "fan_in_fan_out": any(fan_in_fan_out),
        "init_ia3_weights": True,
        "inference_mode": True,
    }
    return write_adapter(output_dir, config, tensors, head)
