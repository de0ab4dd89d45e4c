"""BitFit: train only bias terms, of the chosen roles in the chosen layers.

Ben Zaken, Ravfogel and Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models", ACL 2022. https://arxiv.org/abs/2106.10199
"""

from __future__ import annotations

from torch import nn

from peftlab.architectures import LINEAR_ROLES, NORM_ROLES, Architecture
from peftlab.methods.base import Method, register


@register
class BitFit(Method):
    name = "bitfit"

    def roles(self) -> tuple[str, ...]:
        return self.args.roles(self.args.bitfit_targets, "bitfit_targets", LINEAR_ROLES + NORM_ROLES)

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        self.roles()

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        biases = (self.module(backbone, arch, layer, role).bias for layer in self.layers for role in self.roles())
        return [b for b in biases if b is not None]
