"""LoRA: a trainable low-rank update ``B @ A`` added to frozen linear layers.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022. https://arxiv.org/abs/2106.09685

::

    x ──► base_layer (frozen W) ───────────────────────┐
    │                                                   (+) ──► y = W x + (alpha / r) · B A dropout(x)
    └──► dropout ──► A (r × in) ──► B (out × r) ──► ·s ─┘

``B`` starts at zero, so a fresh LoRA model computes exactly what the base model does. ``merge()`` folds the
update into ``W`` (no extra work at inference), ``unmerge()`` takes it out again. Initialisation and parameter
names follow HuggingFace ``peft`` so that weights export to its format (see :func:`export_peft`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from peftlab.architectures import LINEAR_ROLES, Architecture
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, TunerLayer, register, replace_module


class LoraLinear(TunerLayer):
    """``base_layer`` plus a scaled low-rank update."""

    def __init__(
        self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, init: str = "kaiming"
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False)
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
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

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
    name = "lora"
    order = 0  # wraps the plain nn.Linear, before adapters wrap whatever is there

    def targets(self) -> tuple[str, ...]:
        return self.args.roles(self.args.lora_targets, "lora_targets", LINEAR_ROLES)

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        for layer in self.layers:
            for role in self.targets():
                module = self.module(backbone, arch, layer, role)
                if not isinstance(module, nn.Linear):
                    raise ConfigError(
                        f"LoRA needs nn.Linear at {role} of layer {layer}; found {type(module).__name__}."
                    )

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        for layer in self.layers:
            for role in self.targets():
                path = f"{arch.layers}.{layer}.{arch.roles[role]}"
                base = backbone.get_submodule(path)
                replace_module(
                    backbone,
                    path,
                    LoraLinear(
                        base, self.args.lora_rank, self.args.lora_alpha, self.args.lora_dropout, self.args.lora_init
                    ),
                )
        return []


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


def export_peft(backbone: nn.Module, output_dir: str | os.PathLike, base_model_name_or_path: str) -> Path:
    """Write the backbone's LoRA weights in HuggingFace ``peft`` format (adapter_config.json + safetensors).

    ``peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), output_dir)`` then computes the same
    hidden states as this backbone. Only LoRA is exported (one rank and alpha for the whole model, as peft wants).
    """
    output_dir = Path(output_dir)
    tensors, targets, layers, ranks, alphas = {}, set(), set(), set(), set()
    for name, module in backbone.named_modules():
        if isinstance(module, LoraLinear):
            for part in ("lora_A", "lora_B"):
                tensors[f"base_model.model.{name}.{part}.weight"] = (
                    getattr(module, part).weight.detach().cpu().contiguous()
                )
            targets.add(name.rsplit(".", 1)[-1])
            layers.update(int(p) for p in name.split(".") if p.isdigit())
            ranks.add(module.rank)
            alphas.add(module.scaling * module.rank)
    if not tensors:
        raise ConfigError("The model has no LoRA layers to export.")
    if len(ranks) != 1 or len(alphas) != 1:
        raise ConfigError(f"peft's format needs one rank and alpha; found ranks {ranks}, alphas {alphas}.")
    output_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": ranks.pop(),
        "lora_alpha": alphas.pop(),
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "layers_to_transform": sorted(layers),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (output_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(output_dir / "adapter_model.safetensors"))
    return output_dir
