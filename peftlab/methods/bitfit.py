"""BitFit: train only bias terms, of the chosen roles in the chosen layers.

Ben Zaken, Ravfogel and Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models", ACL 2022. https://arxiv.org/abs/2106.10199

By default the biases themselves train (the Trainer never weight-decays a bias). With ``--bitfit_offset`` a
zero-initialised offset added to each bias trains instead, as in the paper's code (models/bitfit.py): same
function and parameter count, but weight decay then pulls the offset toward 0, i.e. the bias toward its
pretrained value.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.architectures import LINEAR_ROLES, NORM_ROLES, Architecture
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, TunerLayer, register, replace_module


class BiasOffset(TunerLayer):
    """``base_layer(x) + offset``: a trainable offset on a frozen bias."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.offset = nn.Parameter(torch.zeros_like(base_layer.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.offset


@register
class BitFit(Method):
    name = "bitfit"

    def roles(self) -> tuple[str, ...]:
        return self.args.roles(self.args.bitfit_targets, "bitfit_targets", LINEAR_ROLES + NORM_ROLES)

    def targets(self, backbone: nn.Module, arch: Architecture) -> list[tuple[int, str]]:
        """(layer, role) of every bias to train. A role named explicitly must have a bias in every chosen layer;
        with ``all``, roles without one are passed over, but at least one bias must remain."""
        found, missing = [], []
        for layer in self.layers:
            for role in self.roles():
                has_bias = getattr(self.module(backbone, arch, layer, role), "bias", None) is not None
                (found if has_bias else missing).append((layer, role))
        explicit = self.args.bitfit_targets.strip() != "all"
        if (missing and explicit) or not found:
            roles = sorted({role for _, role in missing})
            layers = sorted({layer for layer, _ in missing})
            raise ConfigError(
                f"bitfit would train nothing at {', '.join(roles)} in layers {layers}: {backbone.config.model_type} "
                f"has no bias there. Name roles with biases in --bitfit_targets, or use another method."
            )
        return found

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        self.targets(backbone, arch)

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        targets = self.targets(backbone, arch)
        if not self.args.bitfit_offset:
            return [self.module(backbone, arch, layer, role).bias for layer, role in targets]
        for layer, role in targets:
            path = f"{arch.layers}.{layer}.{arch.roles[role]}"
            replace_module(backbone, path, BiasOffset(backbone.get_submodule(path)))
        return []
