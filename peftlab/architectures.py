"""Where things live in each supported backbone: ONE table of roles, one entry per ``model_type``.

A method never names an attribute of a particular architecture; it asks for a role (``query``, ``ffn_out``...)
and this table says where that role sits inside a layer, and what kind of block it sits in (pre- or post-norm,
causal or not, how many key/value heads). Adding an architecture is adding one entry here (and one tiny config
to ``tests/test_methods.py``).

Roles an architecture lacks are simply absent from its entry: GPT-2 computes query, key and value with one fused
linear layer (role ``qkv``, a transformers ``Conv1D``), encoders have no FFN gate (``ffn_gate``). A method that
names a role explicitly fails when the architecture lacks it; a method that means "the whole block" (``ffn``,
``attn``, ``bitfit_targets=all``) takes the roles the architecture has.

Whether a linear layer has a bias is read from the module itself, not from this table: it depends on the
checkpoint's config (Qwen2's query/key/value have biases and its other linear layers none; Llama's
``attention_bias``/``mlp_bias`` can be turned on), so a table flag could only go stale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from peftlab.errors import ConfigError

ATTENTION_ROLES = ("query", "key", "value", "attn_out", "qkv")
"""Linear layers of the attention block. The attention output projection belongs here, not to the FFN. ``qkv``
is the fused query/key/value projection of architectures that have no separate ones (GPT-2)."""
FFN_ROLES = ("ffn_in", "ffn_gate", "ffn_out")
"""Linear layers of the feed-forward block; ``ffn_gate`` only in gated FFNs (Llama's ``gate_proj``)."""
NORM_ROLES = ("attn_norm", "ffn_norm")
"""The norm of the attention block and of the FFN block: after the block in post-norm encoders (BERT's
``LayerNorm``), before it in pre-norm decoders (Llama's ``input_layernorm`` and ``post_attention_layernorm``)."""
LINEAR_ROLES = ATTENTION_ROLES + FFN_ROLES
ROLES = LINEAR_ROLES + NORM_ROLES


@dataclass(frozen=True)
class Architecture:
    """Attribute paths and block structure of one backbone family."""

    layers: str
    """Path from the backbone to its ``nn.ModuleList`` of transformer layers."""
    roles: dict[str, str]
    """Role -> path inside one layer, for every role of :data:`ROLES` the architecture has."""
    self_attention: str
    """Path inside a layer of the self-attention module that computes keys and values."""
    prefix_refusal: str | None = None
    """Why prefix tuning cannot work here (``None``: it can): the self-attention must take extra keys and values
    through its ``cache`` argument, or (:attr:`prefix_rows`) compute them from its hidden states' rows."""
    prefix_rows: str | None = None
    """The self-attention takes no ``cache`` of extra keys and values, but computes its queries, keys and values from
    the rows of its input and adds this argument (MPNet's relative ``position_bias``, shaped like the scores:
    batch, heads, queries, keys) to its scores. Prefix tuning then puts placeholder rows before the hidden states,
    replaces the key and value projections' outputs of those rows by the prefix, pads the mask and this bias with
    zeros for them (the prefix has no position) and cuts the placeholders from the attention's output."""
    norm_position: str = "post"
    """``post``: a norm closes each block (BERT: ``LayerNorm(x + block(x))``); ``pre``: a norm opens it (Llama,
    GPT-2: ``x + block(norm(x))``)."""
    norm: str = "LayerNorm"
    """The layers' norm: ``LayerNorm`` (weight and bias) or ``RMSNorm`` (weight only)."""
    final_norm: str | None = None
    """Path from the backbone of the norm applied after the last layer (Llama ``norm``, GPT-2 ``ln_f``): part of
    the model's output, so pooled features of a truncated or cached stack go through it too."""
    pooler: str | None = None
    """Path of the backbone's own pooler (BERT's dense + tanh on the first token), if it has one."""
    causal: bool = False
    """Causal self-attention (decoders): each token sees only those before it, so ``cls`` pooling is refused and
    position ids are counted from the attention mask (left and right padding give the same outputs)."""
    positions: str = "absolute"
    """``absolute`` (learned embeddings), ``relative`` (DeBERTa) or ``rotary`` (computed once by the model and
    handed to every layer as ``position_embeddings``)."""
    kv_heads: str | None = None
    """Config attribute holding the number of key/value heads (grouped-query attention); ``None``: one per
    query head."""
    token_types: bool = True
    """Whether the backbone takes ``token_type_ids`` (decoders do not: GPT-2 would add them as token embeddings)."""
    cache_refusal: str | None = None
    """Why the frozen-prefix cache cannot run this stack from layer k (``None``: it can)."""
    cache_refusal_if: str | None = None
    """Path of an optional module whose presence alone causes :attr:`cache_refusal` (DeBERTa-v2's ``encoder.conv``
    exists only with ``conv_kernel_size > 0``)."""
    skip_in_place: bool = False
    """When running from layer k, keep the skipped layers in place as pass-throughs instead of cutting them from
    the list: the model's layer loop looks settings up by position (Gemma2's sliding-window and full-attention
    masks alternate). Decoder layers return a plain tensor, which a pass-through can imitate."""
    hidden_dropout: str | None = "hidden_dropout_prob"
    """Config attribute of the dropout on the layers' outputs (the head's default dropout); ``None``: the
    architecture has none (Llama-style decoders: attention dropout only)."""
    own_head: str = "pooler"
    """The pooling of the architecture's own ``*ForSequenceClassification`` (what ``--pooling pooler`` means):
    ``pooler`` (the backbone's pooler module) or ``last`` (the last non-padding token, as Llama's and GPT-2's
    ``score`` head reads it)."""

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def supports_prefix(self) -> bool:
        return self.prefix_refusal is None

    def refuses_cache(self, backbone: nn.Module) -> str | None:
        """Why ``backbone`` cannot be run from layer k, or ``None``."""
        if self.cache_refusal is None:
            return None
        if self.cache_refusal_if is not None and not _has_module(backbone, self.cache_refusal_if):
            return None
        return self.cache_refusal

    def num_kv_heads(self, config) -> int:
        return getattr(config, self.kv_heads) if self.kv_heads else config.num_attention_heads

    def head_dim(self, config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def inputs(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | bool | None]:
        """The keyword arguments of the backbone's forward for one batch.

        Decoders get position ids counted from the attention mask (a left-padded example has the same positions
        as a right-padded one; transformers counts from the first column) and no key/value cache object.
        """
        inputs: dict = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.token_types:
            inputs["token_type_ids"] = token_type_ids
        if self.causal:
            inputs["use_cache"] = False
            if attention_mask is not None:
                inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return inputs


def _has_module(root: nn.Module, path: str) -> bool:
    try:
        return isinstance(root.get_submodule(path), nn.Module)
    except AttributeError:
        return False


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
    pooler="pooler",
)

_LLAMA_LIKE = Architecture(
    layers="layers",
    roles={
        "query": "self_attn.q_proj",
        "key": "self_attn.k_proj",
        "value": "self_attn.v_proj",
        "attn_out": "self_attn.o_proj",
        "attn_norm": "input_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_in": "mlp.up_proj",
        "ffn_out": "mlp.down_proj",
        "ffn_norm": "post_attention_layernorm",  # Llama's name for the norm that opens the FFN block
    },
    self_attention="self_attn",
    norm_position="pre",
    norm="RMSNorm",
    final_norm="norm",
    causal=True,
    positions="rotary",
    kv_heads="num_key_value_heads",
    token_types=False,
    skip_in_place=True,
    hidden_dropout=None,
    own_head="last",
)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": replace(_BERT_LIKE, pooler=None),
    "deberta-v2": replace(
        _BERT_LIKE,
        roles={
            **_BERT_LIKE.roles,
            "query": "attention.self.query_proj",
            "key": "attention.self.key_proj",
            "value": "attention.self.value_proj",
        },
        prefix_refusal="its disentangled relative-position attention has no slot for extra keys and values",
        positions="relative",
        pooler=None,
        cache_refusal="its convolution after the first layer (conv_kernel_size > 0) is tied to the layer's index",
        cache_refusal_if="encoder.conv",
    ),
    "mpnet": replace(
        _BERT_LIKE,
        roles={
            "query": "attention.attn.q",
            "key": "attention.attn.k",
            "value": "attention.attn.v",
            "attn_out": "attention.attn.o",  # inside the self-attention, as the closing norm is not
            "attn_norm": "attention.LayerNorm",
            "ffn_in": "intermediate.dense",
            "ffn_out": "output.dense",
            "ffn_norm": "output.LayerNorm",
        },
        self_attention="attention.attn",
        # The encoder computes the relative position bias once from the embeddings' shape and hands it to every
        # layer: a stack run from layer k (the cache) gets it as it is, since only the layer list is cut.
        positions="relative",
        prefix_rows="position_bias",
        token_types=False,
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
        prefix_refusal="its attention takes no cache of extra keys and values",
        token_types=False,
        hidden_dropout="dropout",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": replace(
        _LLAMA_LIKE,
        # Gemma2 also closes each block with a norm (post_attention_layernorm, post_feedforward_layernorm): the
        # roles name the norms that open the blocks, as for the other pre-norm decoders.
        roles={**_LLAMA_LIKE.roles, "ffn_norm": "pre_feedforward_layernorm"},
    ),
    "gpt2": Architecture(
        layers="h",
        roles={
            "qkv": "attn.c_attn",
            "attn_out": "attn.c_proj",
            "attn_norm": "ln_1",
            "ffn_in": "mlp.c_fc",
            "ffn_out": "mlp.c_proj",
            "ffn_norm": "ln_2",
        },
        self_attention="attn",
        norm_position="pre",
        final_norm="ln_f",
        causal=True,
        token_types=False,
        skip_in_place=True,
        hidden_dropout="resid_pdrop",
        own_head="last",
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


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2: weight stored
    transposed, ``in x out``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:
        return weight.shape[0], weight.shape[1]
    raise ConfigError(f"{type(module).__name__} is not a linear layer (nn.Linear or Conv1D).")


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
