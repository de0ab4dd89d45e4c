"""BitFit: train only bias terms, of the chosen roles in the chosen layers.

Ben Zaken, Ravfogel and Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models", ACL 2022. https://arxiv.org/abs/2106.10199

By default the biases themselves train (the Trainer never weight-decays a bias). With ``--bitfit_offset`` a
zero-initialised offset added to each bias trains instead, as in the paper's code (models/bitfit.py): same
function and parameter count, but weight decay then pulls the offset toward 0, i.e. the bias toward its
pretrained value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from peftlab.architectures import ROLES, Architecture
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, TunerLayer, parse_roles, register


@dataclass
class BitFitOptions:
    """Options of ``--method bitfit``."""

    bitfit_targets: str = field(
        default="all",
        metadata={
            "help": f"Roles whose biases BitFit trains: 'all' (every role of the architecture with a bias) or a "
            f"comma list of {', '.join(ROLES)}."
        },
    )
    bitfit_offset: bool = field(
        default=False,
        metadata={
            "help": "BitFit trains a zero-initialised offset added to each bias (weight decay then pulls it toward the "
            "pretrained bias, as in the paper's code) instead of the bias itself (never weight-decayed)."
        },
    )

    def __post_init__(self) -> None:
        parse_roles(self.bitfit_targets, "bitfit_targets", ROLES)


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
    """BitFit (Ben Zaken et al. 2022): the biases of the chosen roles train, nothing else."""

    name = "bitfit"
    options_class = BitFitOptions
    paper_learning_rate = 2e-4  # bitfit_hyper.sh:24,41,54,55
    paper_options = MappingProxyType({
        "bitfit_targets": "query,ffn_in",  # bitfit_arguments.py:190-191
        "bitfit_offset": True,  # a zero offset on the frozen bias: models/bitfit.py:58-68
    })  # fmt: skip

    def targets(self, backbone: nn.Module, arch: Architecture) -> list[tuple[int, str]]:
        """(layer, role) of every bias to train. A role named explicitly must exist and have a bias in every
        chosen layer; with ``all``, roles without one (or absent from the architecture) are passed over, but at
        least one bias must remain. Biasless linear layers (Llama's) and RMSNorms have none."""
        explicit = self.options.bitfit_targets.strip() != "all"
        roles = parse_roles(self.options.bitfit_targets, "bitfit_targets", ROLES)
        found, missing = [], []
        for layer, role in self.resolve(backbone, arch, roles, "bitfit_targets", explicit):
            has_bias = getattr(self.module(backbone, arch, layer, role), "bias", None) is not None
            (found if has_bias else missing).append((layer, role))
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
        for layer, role in targets:
            path = self.path(arch, layer, role)
            if self.options.bitfit_offset:
                self.replace(backbone, path, BiasOffset(backbone.get_submodule(path)))
            else:
                self.adapted(path)
        if self.options.bitfit_offset:
            return []
        return [self.module(backbone, arch, layer, role).bias for layer, role in targets]
