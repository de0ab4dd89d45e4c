"""Prefix tuning: trainable key/value vectors prepended in the chosen layers' self-attention.

Li and Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021.
https://arxiv.org/abs/2101.00190

Every token can attend to ``--prefix_length`` extra key/value pairs per layer. They are either free parameters or,
with ``--prefix_reparam`` (default), produced by an MLP from a smaller embedding, which trains more stably. The
pairs reach the attention through its ``cache`` argument (the slot that holds earlier keys and values when
decoding), so no attention code is copied; the attention mask is widened to match. Architectures whose attention
has no such slot are refused before anything is modified.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.architectures import Architecture, layers_of
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, PeftArguments, TunerLayer, register


class PrefixKeyValues:
    """A stand-in for a transformers ``Cache``: ``update`` returns the prefix followed by the new keys/values."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(self, key: torch.Tensor, value: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.keys.to(key.dtype), key], dim=2), torch.cat([self.values.to(value.dtype), value], dim=2)


class PrefixEncoder(TunerLayer):
    """The trainable prefix of one layer: (length, 2 * hidden) key/value vectors."""

    def __init__(self, hidden: int, num_heads: int, args: PeftArguments) -> None:
        super().__init__()
        self.length, self.num_heads, self.head_dim = args.prefix_length, num_heads, hidden // num_heads
        if args.prefix_reparam:
            self.embedding = nn.Parameter(torch.randn(args.prefix_length, hidden) * 0.02)
            self.mlp = nn.Sequential(
                nn.Linear(hidden, args.prefix_hidden), nn.Tanh(), nn.Linear(args.prefix_hidden, 2 * hidden)
            )
        else:
            self.embedding = nn.Parameter(torch.randn(args.prefix_length, 2 * hidden) * 0.02)
            self.mlp = None

    def key_values(self, batch: int) -> PrefixKeyValues:
        kv = self.embedding if self.mlp is None else self.mlp(self.embedding)
        kv = kv.view(self.length, 2, self.num_heads, self.head_dim).permute(1, 2, 0, 3)  # (2, heads, length, dim)
        keys, values = kv[0].unsqueeze(0), kv[1].unsqueeze(0)
        return PrefixKeyValues(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of the self-attention module: hand it the prefix and widen its attention mask."""
        hidden_states = args[0] if args else kwargs["hidden_states"]
        kwargs["cache"] = self.key_values(hidden_states.shape[0])
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask, args = args[1], args[:1]
        if mask is not None:
            keep = torch.ones if mask.dtype == torch.bool else torch.zeros
            pad = keep((*mask.shape[:-1], self.length), dtype=mask.dtype, device=mask.device)
            mask = torch.cat([pad, mask], dim=-1)
        kwargs["attention_mask"] = mask
        return args, kwargs


@register
class Prefix(Method):
    name = "prefix"

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        if not arch.supports_prefix:
            raise ConfigError(
                f"prefix tuning is not available for {backbone.config.model_type}: its attention takes no extra "
                "keys and values. It works on bert, roberta, xlm-roberta and electra."
            )

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        config = backbone.config
        for layer in self.layers:
            attention = layers_of(backbone, arch)[layer].get_submodule(arch.self_attention)
            encoder = PrefixEncoder(config.hidden_size, config.num_attention_heads, self.args)
            attention.add_module("prefix", encoder)
            attention.register_forward_pre_hook(encoder.hook, with_kwargs=True)
        return []
