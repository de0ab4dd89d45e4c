"""Prefix tuning: trainable key/value vectors prepended in the chosen layers' self-attention.

Li and Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021.
https://arxiv.org/abs/2101.00190

Every token can attend to ``--prefix_length`` extra key/value pairs per layer. They are either free parameters or,
with ``--prefix_reparam`` (default), produced by an MLP from a smaller embedding, which trains more stably. The
pairs reach the attention through its ``cache`` argument (the slot that holds earlier keys and values when
decoding: transformers calls ``cache.update(keys, values, layer_idx)`` and attends to what it returns), so no
attention code is copied; the attention mask is widened to match. An attention without that slot that computes
its keys and values from the rows of its input and adds a bias of the scores' shape (MPNet's relative position
bias: the role table's ``prefix_rows``) gets the prefix through placeholder rows: they are put before the hidden
states, the key and value projections' outputs for them are replaced by the prefix, the mask and the bias are
padded with zeros for them (the prefix has no position) and they are cut from the attention's output, so the real
tokens see exactly the prefix and themselves. Other architectures whose attention has no slot are refused before
anything is modified (the role table says why).

Decoders: with grouped-query attention there is one prefix key/value per *key/value* head (the attention repeats
them for its query heads as it does its own keys); the prefix is added after the rotary embedding, so it has no
position; and every token, padding included, sees the whole prefix while the causal and padding mask still
governs the real keys (where the model left the mask out, meaning plain causal attention, it is written out).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from peftlab.architectures import ARCHITECTURES, Architecture, layers_of
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, TunerLayer, check_positive, register


@dataclass
class PrefixOptions:
    """Options of ``--method prefix``."""

    prefix_length: int = field(default=16, metadata={"help": "Number of trainable key/value pairs per layer."})
    prefix_reparam: bool = field(
        default=True, metadata={"help": "Produce the prefix through an MLP (Li & Liang's reparameterisation)."}
    )
    prefix_hidden: int = field(default=512, metadata={"help": "Hidden width of the prefix MLP."})

    def __post_init__(self) -> None:
        check_positive(self, "prefix_length", "prefix_hidden")


ATTENTION_FUNCTIONS = ("eager", "sdpa")
"""Attention implementations whose mask is a dense tensor the hook can widen (not flash attention's)."""


class PrefixKeyValues:
    """A stand-in for a transformers ``Cache``: ``update`` returns the prefix followed by the new keys/values."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(self, key: torch.Tensor, value: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.keys.to(key.dtype), key], dim=2), torch.cat([self.values.to(value.dtype), value], dim=2)


class PrefixEncoder(TunerLayer):
    """The trainable prefix of one layer: (length, 2 * kv_heads * head_dim) key/value vectors."""

    def __init__(self, hidden: int, kv_heads: int, head_dim: int, args: PrefixOptions, causal: bool = False) -> None:
        super().__init__()
        self.length, self.num_heads, self.head_dim = args.prefix_length, kv_heads, head_dim
        self.causal = causal
        width = 2 * kv_heads * head_dim
        if args.prefix_reparam:
            self.embedding = nn.Parameter(torch.randn(args.prefix_length, hidden) * 0.02)
            self.mlp = nn.Sequential(
                nn.Linear(hidden, args.prefix_hidden), nn.Tanh(), nn.Linear(args.prefix_hidden, width)
            )
        else:
            self.embedding = nn.Parameter(torch.randn(args.prefix_length, width) * 0.02)
            self.mlp = None

    def key_values(self, batch: int) -> PrefixKeyValues:
        kv = self.embedding if self.mlp is None else self.mlp(self.embedding)
        kv = kv.view(self.length, 2, self.num_heads, self.head_dim).permute(1, 2, 0, 3)  # (2, heads, length, dim)
        keys, values = kv[0].unsqueeze(0), kv[1].unsqueeze(0)
        return PrefixKeyValues(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))

    def attach(self, layer: nn.Module, arch: Architecture) -> None:
        """Hook the prefix into the self-attention of ``layer``: through its ``cache`` argument, or, where the
        architecture says so (:attr:`~peftlab.architectures.Architecture.prefix_rows`), through placeholder rows
        whose key and value projections are replaced by the prefix."""
        attention = layer.get_submodule(arch.self_attention)
        if arch.prefix_rows is None:
            attention.register_forward_pre_hook(self.hook, with_kwargs=True)
            return
        key, value = (layer.get_submodule(arch.roles[role]) for role in ("key", "value"))
        self.bias_argument, self.rows = arch.prefix_rows, None
        self.positional = [
            name
            for name, param in inspect.signature(attention.forward).parameters.items()
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
        ]
        attention.register_forward_pre_hook(self.rows_hook, with_kwargs=True)
        attention.register_forward_hook(self.cut_rows)
        key.register_forward_hook(self.replace_keys)  # bound methods: a deep copy of the model hooks its own copy
        value.register_forward_hook(self.replace_values)

    def rows_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of a self-attention without a ``cache``: ``length`` placeholder rows before the hidden
        states; the mask and the additive bias padded with zeros (keep) for them, as keys and as queries."""
        kwargs = {**dict(zip(self.positional, args)), **kwargs}
        hidden = kwargs["hidden_states"]
        kwargs["hidden_states"] = torch.cat(
            [hidden.new_zeros(hidden.shape[0], self.length, hidden.shape[-1]), hidden], 1
        )
        for name in ("attention_mask", self.bias_argument):
            if kwargs.get(name) is not None:
                kwargs[name] = _pad_front(kwargs[name], self.length)
        kv = self.embedding if self.mlp is None else self.mlp(self.embedding)
        self.rows = kv.view(1, self.length, 2, -1).expand(hidden.shape[0], -1, -1, -1)  # (batch, length, 2, width)
        return (), kwargs

    def replace_rows(self, output: torch.Tensor, index: int) -> torch.Tensor:
        """The key (``index`` 0) or value (1) projection's output with the prefix in the placeholder rows."""
        if self.rows is None:  # called outside the attention's forward
            return output
        return torch.cat([self.rows[:, :, index].to(output.dtype), output[:, self.length :]], dim=1)

    def replace_keys(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.replace_rows(output, 0)

    def replace_values(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.replace_rows(output, 1)

    def cut_rows(self, module: nn.Module, args: tuple, output):
        """Forward hook of the self-attention: its output without the placeholder rows (as queries)."""
        self.rows = None
        if isinstance(output, torch.Tensor):
            return output[:, self.length :]
        first, *rest = output
        rest = [r[..., self.length :, :] if isinstance(r, torch.Tensor) and r.dim() == 4 else r for r in rest]
        return (first[:, self.length :], *rest)

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of the self-attention module: hand it the prefix and widen its attention mask."""
        hidden_states = args[0] if args else kwargs["hidden_states"]
        kwargs["cache"] = self.key_values(hidden_states.shape[0])
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask, args = args[1], args[:1]
        if mask is None and self.causal:  # the model relies on the attention's is_causal: write the mask out
            length = hidden_states.shape[1]
            mask = torch.ones(length, length, dtype=torch.bool, device=hidden_states.device).tril()[None, None]
        if mask is not None:
            keep = torch.ones if mask.dtype == torch.bool else torch.zeros
            pad = keep((*mask.shape[:-1], self.length), dtype=mask.dtype, device=mask.device)
            mask = torch.cat([pad, mask], dim=-1)
        kwargs["attention_mask"] = mask
        return args, kwargs


@register
class Prefix(Method):
    """Prefix tuning (Li and Liang 2021): trained key and value vectors prepended in the chosen layers."""

    name = "prefix"
    options_class = PrefixOptions
    paper_learning_rate = 2e-4  # prompt_hyper.sh:24,41,54,55
    paper_options = MappingProxyType({
        "prefix_length": 2,  # prompt_hyper.sh:56
        "prefix_reparam": False,  # raw key/value vectors, no MLP: modeling_prompt_roberta.py:146-160
    })  # fmt: skip

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        config = backbone.config
        if arch.prefix_refusal is not None:
            works = sorted({t for t, a in ARCHITECTURES.items() if a.prefix_refusal is None})
            raise ConfigError(
                f"prefix tuning is not available for {config.model_type}: {arch.prefix_refusal}. It works on "
                f"{', '.join(works)}."
            )
        implementation = getattr(config, "_attn_implementation", None) or "eager"
        if arch.causal and implementation not in ATTENTION_FUNCTIONS:
            raise ConfigError(
                f"prefix tuning on {config.model_type} needs the eager or sdpa attention, whose mask it widens; "
                f"this model uses {implementation!r}."
            )

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        config = backbone.config
        for layer in self.layers:
            attention = layers_of(backbone, arch)[layer].get_submodule(arch.self_attention)
            encoder = PrefixEncoder(
                config.hidden_size, arch.num_kv_heads(config), arch.head_dim(config), self.options, arch.causal
            )
            attention.add_module("prefix", encoder)
            encoder.attach(layers_of(backbone, arch)[layer], arch)
            self.adapted(f"{arch.layers}.{layer}.{arch.self_attention}")
        return []


def _pad_front(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """A mask or bias of the scores' shape (..., queries, keys) with ``length`` rows and columns of zeros (``True``
    for a boolean mask: attend) in front; a query axis of size 1 (broadcast) stays."""
    fill = True if tensor.dtype == torch.bool else 0
    tensor = torch.cat([tensor.new_full((*tensor.shape[:-1], length), fill), tensor], dim=-1)
    if tensor.dim() >= 2 and tensor.shape[-2] > 1:
        tensor = torch.cat([tensor.new_full((*tensor.shape[:-2], length, tensor.shape[-1]), fill), tensor], dim=-2)
    return tensor
