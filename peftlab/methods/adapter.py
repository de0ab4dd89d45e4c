"""Bottleneck adapters on the FFN or the attention block, sequential or parallel.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (https://arxiv.org/abs/1902.00751);
He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022 (parallel and scaled
parallel adapters, https://arxiv.org/abs/2110.04366).

``f(z) = up(act(down(LN(z))))`` is the bottleneck (the input LayerNorm only with ``--adapter_layernorm``). A
post-LN block computes ``norm(dropout(out_proj(...)) + x)`` from its input ``x``. The adapter joins it in one of
two ways::

    added (default):         out_proj ──► h ──► h + s · f(h)         (sequential)
                             out_proj ──► h ──► h + s · f(x)         (parallel; x: the block's input)

    --adapter_residual_norm  the adapter has its own residual connection, dropout and LayerNorm LN_a, as the
                             paper's code has it (PKU-TANGENT/Efficiency models/adapter.py, Adapter.forward;
                             models/modeling_adapter_roberta.py, AdapterRobertaLayer):
                             y = norm(...)  ──► LN_a(y + dropout(s · f(y)))                   (sequential: after
                                                                                               the block's norm)
                             norm(dropout(out_proj(...)) + LN_a(x + dropout(s · f(x))))       (parallel: the
                                                                                               block's residual)

With ``--adapter_init zero`` (default) the up-projection starts at zero, so a fresh added adapter is the identity
and the model computes what the base model does; ``model`` initialises both projections as the
backbone initialises its linear layers, N(0, initializer_range) with zero biases: what the paper's code ends up
with whatever its ``identity_init`` says (transformers re-initialises the new modules; docs/paper_protocol.md).
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.architectures import Architecture
from peftlab.errors import ConfigError
from peftlab.methods.base import ACTIVATIONS, Method, PeftArguments, TunerLayer, register, replace_module

# Where the block's input can be read (the input of its first linear layer), and where it ends.
_INPUT_ROLE = {"ffn": "ffn_in", "attn": "query"}
_OUTPUT_ROLE = {"ffn": "ffn_out", "attn": "attn_out"}
_NORM_ROLE = {"ffn": "ffn_norm", "attn": "attn_norm"}


class Bottleneck(nn.Module):
    """``up(act(down(LN(x))))`` with ``down``: d -> r and ``up``: r -> d."""

    def __init__(self, dim: int, args: PeftArguments, init_std: float = 0.02) -> None:
        super().__init__()
        affine = args.adapter_layernorm_affine
        self.norm = nn.LayerNorm(dim, elementwise_affine=affine) if args.adapter_layernorm else nn.Identity()
        self.down = nn.Linear(dim, args.bottleneck_dim)
        self.act = ACTIVATIONS[args.adapter_activation]()
        self.up = nn.Linear(args.bottleneck_dim, dim)
        if args.adapter_init == "zero":
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        elif args.adapter_init == "normal":
            nn.init.normal_(self.up.weight, std=0.02)
            nn.init.zeros_(self.up.bias)
        else:  # "model": as the backbone initialises its linear layers
            for linear in (self.down, self.up):
                nn.init.normal_(linear.weight, std=init_std)
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(x))))


class BlockInput:
    """Remembers the input of a block (read by a pre-hook on its first linear layer) for a parallel adapter."""

    def __init__(self, input_module: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        # read x before any LoRA wrapper too
        getattr(input_module, "base_layer", input_module).register_forward_pre_hook(self._remember)

    def _remember(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("parallel adapter: the block's input was not seen in this forward pass")
        return value


class AdapterLayer(TunerLayer):
    """Wraps a block's output projection; adds the adapter's output to it."""

    def __init__(
        self, base_layer: nn.Module, dim: int, args: PeftArguments, block_input: BlockInput | None, init_std: float
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Bottleneck(dim, args, init_std)
        self.scaling = args.adapter_scaling
        self.block_input = block_input

    @property
    def parallel(self) -> bool:
        return self.block_input is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        source = out if self.block_input is None else self.block_input.take()
        return out + self.scaling * self.adapter(source)


class ResidualNormAdapterLayer(TunerLayer):
    """Wraps a block's closing LayerNorm; the adapter has its own residual connection, dropout and LayerNorm."""

    def __init__(
        self,
        base_layer: nn.LayerNorm,
        dim: int,
        args: PeftArguments,
        block_input: BlockInput | None,
        init_std: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Bottleneck(dim, args, init_std)
        self.scaling = args.adapter_scaling
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=base_layer.eps, elementwise_affine=args.adapter_layernorm_affine)
        self.block_input = block_input

    @property
    def parallel(self) -> bool:
        return self.block_input is not None

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """``LN_a(z + dropout(s · f(z)))``."""
        return self.norm(z + self.dropout(self.scaling * self.adapter(z)))

    def forward(self, summed: torch.Tensor) -> torch.Tensor:
        if self.block_input is None:
            return self.transform(self.base_layer(summed))
        x = self.block_input.take()  # summed = dropout(out_proj(...)) + x: swap x for the adapter's output
        return self.base_layer(summed - x + self.transform(x))


@register
class Adapter(Method):
    name = "adapter"

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        width = self.module(backbone, arch, self.layers[0], "ffn_in").out_features
        if not 1 <= self.args.bottleneck_dim <= width:
            raise ConfigError(
                f"--bottleneck_dim {self.args.bottleneck_dim} must be between 1 and the FFN width {width}."
            )
        if self.args.adapter_residual_norm:
            norm = self.module(backbone, arch, self.layers[0], _NORM_ROLE[self.args.placement])
            if not isinstance(norm, nn.LayerNorm):
                raise ConfigError(
                    f"--adapter_residual_norm needs a LayerNorm closing the {self.args.placement} block; "
                    f"{backbone.config.model_type} has {type(norm).__name__} there."
                )

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        placement = self.args.placement
        dim = backbone.config.hidden_size
        dropout = getattr(backbone.config, "hidden_dropout_prob", 0.1)
        init_std = getattr(backbone.config, "initializer_range", 0.02)
        for layer in self.layers:
            block_input = None
            if self.args.adapter_form == "parallel":
                block_input = BlockInput(self.module(backbone, arch, layer, _INPUT_ROLE[placement]))
            if self.args.adapter_residual_norm:
                path = f"{arch.layers}.{layer}.{arch.roles[_NORM_ROLE[placement]]}"
                new = ResidualNormAdapterLayer(
                    backbone.get_submodule(path), dim, self.args, block_input, init_std, dropout
                )
            else:
                path = f"{arch.layers}.{layer}.{arch.roles[_OUTPUT_ROLE[placement]]}"
                new = AdapterLayer(backbone.get_submodule(path), dim, self.args, block_input, init_std)
            replace_module(backbone, path, new)
        return []
