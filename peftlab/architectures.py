"""Where things live in each supported encoder: ONE table of roles, one entry per ``model_type``.

A method never names an attribute of a particular architecture; it asks for a role (``query``, ``ffn_out``...)
and this table says where that role sits inside a layer. Adding an architecture is adding one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from peftlab.errors import ConfigError

ATTENTION_ROLES = ("query", "key", "value", "attn_out")
"""Linear layers of the attention block. The attention output projection belongs here, not to the FFN."""
FFN_ROLES = ("ffn_in", "ffn_out")
"""Linear layers of the feed-forward block."""
NORM_ROLES = ("attn_norm", "ffn_norm")
"""The LayerNorm after the attention block and after the FFN block (post-LN encoders)."""
LINEAR_ROLES = ATTENTION_ROLES + FFN_ROLES


@dataclass(frozen=True)
class Architecture:
    """Attribute paths of one encoder family."""

    layers: str
    """Path from the backbone to its ``nn.ModuleList`` of transformer layers."""
    roles: dict[str, str]
    """Role -> path inside one layer, for every role in ``LINEAR_ROLES + NORM_ROLES``."""
    self_attention: str
    """Path inside a layer of the self-attention module that computes keys and values."""
    supports_prefix: bool
    """Whether that module takes extra key/value pairs through the ``cache`` argument (prefix tuning)."""


_BERT_LIKE = Architecture(
    layers="encoder.layer",
    roles={
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "ffn_norm": "output.LayerNorm",
    },
    self_attention="attention.self",
    supports_prefix=True,
)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "deberta-v2": replace(
        _BERT_LIKE,
        roles={
            **_BERT_LIKE.roles,
            "query": "attention.self.query_proj",
            "key": "attention.self.key_proj",
            "value": "attention.self.value_proj",
        },
        supports_prefix=False,  # disentangled relative-position attention has no slot for extra keys
    ),
    "distilbert": Architecture(
        layers="transformer.layer",
        roles={
            "query": "attention.q_lin",
            "key": "attention.k_lin",
            "value": "attention.v_lin",
            "attn_out": "attention.out_lin",
            "attn_norm": "sa_layer_norm",
            "ffn_in": "ffn.lin1",
            "ffn_out": "ffn.lin2",
            "ffn_norm": "output_layer_norm",
        },
        self_attention="attention",
        supports_prefix=False,  # its attention takes no cache of extra keys and values
    ),
}


def architecture_of(backbone: nn.Module) -> Architecture:
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            f"Architecture {model_type!r} is not supported. Supported model types: {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[model_type]


def layers_of(backbone: nn.Module, arch: Architecture) -> nn.ModuleList:
    return backbone.get_submodule(arch.layers)


def parse_layers(spec: str | int | list[int], num_layers: int) -> list[int]:
    """Layer indices from ``all``, ``5``, ``-1`` (from the top), ``1,3`` or a range ``0-2`` (inclusive).

    Raises :class:`ConfigError` naming the valid range for any index outside it, and for a reversed range
    (``5-2``) or anything else that would select no layer: a method given no layer would train nothing.
    """
    if isinstance(spec, int):
        items: list[str] = [str(spec)]
    elif isinstance(spec, list):
        items = [str(i) for i in spec]
    else:
        text = str(spec).strip().lower()
        if text == "all":
            return list(range(num_layers))
        items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError(f"Empty layer list {spec!r}; give 'all', an index, a list '1,3' or a range '0-2'.")
    layers: list[int] = []
    for item in items:
        bounds = item.split("-", 1) if "-" in item[1:] else [item]
        if len(bounds) == 2 and not item.startswith("-"):
            start, stop = _index(bounds[0], spec, num_layers), _index(bounds[1], spec, num_layers)
            if start > stop:  # an empty range would silently select nothing (a method that trains nothing)
                where = "" if item == str(spec).strip().lower() else f" in {str(spec)!r}"
                raise ConfigError(
                    f"Layer range {item!r}{where} is reversed: it selects no layer. Write the lower index first: "
                    f"'{stop}-{start}'."
                )
            layers.extend(range(start, stop + 1))
        else:
            layers.append(_index(item, spec, num_layers))
    if not layers:  # pragma: no cover - every item above adds at least one layer; kept as the rule itself
        raise ConfigError(f"Layer spec {spec!r} selects no layer; give 'all', an index, a list '1,3' or a range '0-2'.")
    return sorted(set(layers))


def _index(text: str, spec, num_layers: int) -> int:
    try:
        index = int(text)
    except ValueError:
        raise ConfigError(
            f"Layer spec {spec!r}: {text!r} is not an index; use 'all', '5', '-1', '1,3' or '0-2'."
        ) from None
    if not -num_layers <= index < num_layers:
        raise ConfigError(
            f"Layer {index} is out of range for a model with {num_layers} layers; valid: 0..{num_layers - 1} "
            f"or -{num_layers}..-1."
        )
    return index % num_layers


def truncate_layers(backbone: nn.Module, num_layers: int) -> None:
    """Keep only the first ``num_layers`` layers (the paper's per-layer probe reads intermediate layers)."""
    arch = architecture_of(backbone)
    layers = layers_of(backbone, arch)
    if not 1 <= num_layers <= len(layers):
        raise ConfigError(f"--num_hidden_layers {num_layers} must be between 1 and {len(layers)} for this model.")
    parent_path, _, name = arch.layers.rpartition(".")
    parent = backbone.get_submodule(parent_path) if parent_path else backbone
    setattr(parent, name, nn.ModuleList(list(layers)[:num_layers]))
    for attr in ("num_hidden_layers", "n_layers"):
        if hasattr(backbone.config, attr):
            setattr(backbone.config, attr, num_layers)
