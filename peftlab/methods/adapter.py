"""Bottleneck adapters on the FFN or the attention block, sequential or parallel.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (https://arxiv.org/abs/1902.00751);
He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022 (parallel and scaled
parallel adapters, https://arxiv.org/abs/2110.04366).

::

    sequential:  x ──► block ──► out_proj ──► h ──► h + s · up(act(down(LN(h))))
    parallel:    x ──► block ──► out_proj ──► h ──► h + s · up(act(down(LN(x))))      (x: the block's input)

The adapter sits after the block's output projection (``ffn_out`` or ``attn_out``), before the residual add and
LayerNorm. With ``--adapter_init zero`` (default) the up-projection starts at zero, so a fresh adapter is the
identity and the model computes what the base model does.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.architectures import Architecture
from peftlab.errors import ConfigError
from peftlab.methods.base import ACTIVATIONS, Method, PeftArguments, TunerLayer, register, replace_module

# Where the block's input can be read for a parallel adapter: the input of its first linear layer.
_INPUT_ROLE = {"ffn": "ffn_in", "attn": "query"}
_OUTPUT_ROLE = {"ffn": "ffn_out", "attn": "attn_out"}


class Bottleneck(nn.Module):
    """``up(act(down(LN(x))))`` with ``down``: d -> r and ``up``: r -> d."""

    def __init__(self, dim: int, args: PeftArguments) -> None:
        super().__init__()
        affine = args.adapter_layernorm_affine
        self.norm = nn.LayerNorm(dim, elementwise_affine=affine) if args.adapter_layernorm else nn.Identity()
        self.down = nn.Linear(dim, args.bottleneck_dim)
        self.act = ACTIVATIONS[args.adapter_activation]()
        self.up = nn.Linear(args.bottleneck_dim, dim)
        if args.adapter_init == "zero":
            nn.init.zeros_(self.up.weight)
        else:
            nn.init.normal_(self.up.weight, std=0.02)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(x))))


class AdapterLayer(TunerLayer):
    """Wraps a block's output projection; adds the adapter's output to it."""

    def __init__(self, base_layer: nn.Module, dim: int, args: PeftArguments, input_module: nn.Module | None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Bottleneck(dim, args)
        self.scaling = args.adapter_scaling
        self.parallel = input_module is not None
        self._block_input: torch.Tensor | None = None
        if input_module is not None:
            input_module.register_forward_pre_hook(self._remember_block_input)

    def _remember_block_input(self, module: nn.Module, args: tuple) -> None:
        self._block_input = args[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.parallel:
            source, self._block_input = self._block_input, None
            if source is None:
                raise RuntimeError("parallel adapter: the block's input was not seen in this forward pass")
        else:
            source = out
        return out + self.scaling * self.adapter(source)


@register
class Adapter(Method):
    name = "adapter"

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        width = self.module(backbone, arch, self.layers[0], "ffn_in").out_features
        if not 1 <= self.args.bottleneck_dim <= width:
            raise ConfigError(
                f"--bottleneck_dim {self.args.bottleneck_dim} must be between 1 and the FFN width {width}."
            )

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        placement = self.args.placement
        dim = backbone.config.hidden_size
        for layer in self.layers:
            path = f"{arch.layers}.{layer}.{arch.roles[_OUTPUT_ROLE[placement]]}"
            source = None
            if self.args.adapter_form == "parallel":
                source = self.module(backbone, arch, layer, _INPUT_ROLE[placement])
                source = getattr(source, "base_layer", source)  # read x before any LoRA wrapper too
            replace_module(backbone, path, AdapterLayer(backbone.get_submodule(path), dim, self.args, source))
        return []
