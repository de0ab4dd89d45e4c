"""Frozen-prefix activation cache: compute the frozen bottom of the network once, train only the top.

When nothing in layers ``0..k-1`` (nor the embeddings) trains, the hidden states entering layer ``k`` are the same
in every epoch, for every method and seed that trains at layer ``k`` or above. They are computed once (frozen
layers in eval mode: no dropout there), kept per example without padding, and stored on disk under a key made
of everything that determines them: the frozen parameters, the token ids, the layer, what is kept (the hidden
states, or one pooling of them) and the stored dtype. Training then runs only layers ``k..L-1`` on them. When no
layer trains at all (a probe), the pooled features are cached and the backbone is skipped entirely.

One pass serves many runs. A :class:`FrozenPrefixCache` is told beforehand what every run of a process will read
(:meth:`FrozenPrefixCache.plan`); the first run that needs a split computes, in ONE no-grad pass over it, every
planned layer input and pooling of that split that is not on disk yet (e.g. the inputs of layers 2 and 5 and the
``cls`` and ``mean`` features of the top layer, for a Table 1 column), writes each to its own file and keeps them
in memory for the runs after it.

Trade-off: memory and disk of ``tokens x hidden`` values per split and layer, and no dropout below layer ``k``; in
exchange, each step skips ``k`` layers forward and the first pass is a cheap no-grad one that a sweep pays once.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors import SafetensorError
from torch import nn
from transformers import DataCollatorWithPadding

from peftlab.architectures import Architecture, architecture_of, layers_of
from peftlab.cachefiles import CacheFileError, digest, read_tensors, write_tensors
from peftlab.errors import ConfigError
from peftlab.methods import TunerLayer

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3
"""Bumped whenever the meaning of a key or the file layout changes."""
CONFIG_NOT_IN_KEY = ("num_hidden_layers", "transformers_version", "architectures", "id2label", "label2id",
                     "name_or_path", "dtype", "torch_dtype")  # fmt: skip
"""Config entries that do not change what the layers below a need compute (the layer count above it, labels,
provenance; the weights' dtype is in their digest): left out of the key."""
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "label")
POOLED_KINDS = ("cls", "mean", "pooler", "last")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    """``$PEFTLAB_CACHE``, else ``~/.cache/peftlab``: the frozen-prefix cache and downloaded models live under it."""
    return Path(os.environ.get("PEFTLAB_CACHE", Path.home() / ".cache" / "peftlab"))


def default_cache_dir() -> Path:
    return cache_root() / "frozen_prefix"


@dataclass(frozen=True, order=True)
class Need:
    """What one run reads from the cache: the input of layer ``depth`` (``kind="hidden"``), or, for a probe, one
    pooling (``cls``, ``mean``, ``pooler``, ``last``) of the hidden states after ``depth`` layers (and after the
    architecture's final norm, as the model's own output of that many layers)."""

    depth: int
    kind: str


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters()) or any(isinstance(m, TunerLayer) for m in module.modules())


def _above_layers(backbone: nn.Module, arch: Architecture) -> set[int]:
    """Ids of the parameters that sit above the layer stack (pooler, final norm): their training does not change
    what enters any layer."""
    above = set()
    for path in (arch.pooler, arch.final_norm):
        if path is not None and isinstance(getattr(backbone, path, None), nn.Module):
            above.update(id(p) for p in backbone.get_submodule(path).parameters())
    return above


def frozen_prefix_depth(backbone: nn.Module) -> int:
    """Number of bottom layers in which nothing trains (0 when the embeddings train or nothing can be cached)."""
    arch = architecture_of(backbone)
    layers = layers_of(backbone, arch)
    if arch.refuses_cache(backbone):
        return 0
    skip = {id(p) for p in layers.parameters()} | _above_layers(backbone, arch)
    # What sits below the layers (the embeddings) must be frozen; what sits above them does not matter.
    if any(p.requires_grad for p in backbone.parameters() if id(p) not in skip):
        return 0
    for index, layer in enumerate(layers):
        if _trains(layer):
            return index
    return len(layers)


def need_of(model: nn.Module) -> Need | None:
    """What ``model`` (a :class:`~peftlab.modeling.SequenceClassifier`, real or on the meta device) would read from
    the cache; ``None`` when layer 0 or the embeddings train. An architecture whose stack cannot be run from layer
    k is refused with the reason."""
    backbone = model.backbone
    arch = architecture_of(backbone)
    refusal = arch.refuses_cache(backbone)
    if refusal is not None:
        raise ConfigError(
            f"--cache_frozen_prefix is not available for this {backbone.config.model_type}: {refusal}. Run without it."
        )
    depth = frozen_prefix_depth(backbone)
    if depth == 0:
        return None
    if depth < len(layers_of(backbone, arch)):
        return Need(depth, "hidden")
    if model.pooling == "pooler" and any(p.requires_grad for p in backbone.get_submodule(arch.pooler).parameters()):
        raise ConfigError("--cache_frozen_prefix with a trainable pooler: use pooling cls or mean.")
    return Need(depth, model.pooling)


class _PassThrough(nn.Module):
    """Stands in for a skipped decoder layer: returns its input hidden states."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


@contextmanager
def run_from_layer(backbone: nn.Module, start: int, hidden: torch.Tensor | None):
    """Within the block, the backbone runs only layers ``start..``; ``hidden`` replaces the input of ``start``.

    The model's own forward still runs around the layers, so each layer gets what the model computes for it from
    the inputs: the attention mask (causal and padding), rotary ``position_embeddings``, DeBERTa's relative
    embeddings. Skipped layers are cut from the list, or, where the model looks settings up by layer position
    (``skip_in_place``: Gemma2's alternating masks), replaced by pass-throughs.

    With ``hidden=None`` (used to fill the cache) it runs layers ``..start-1`` instead and leaves out the final
    norm (Llama's ``norm``, GPT-2's ``ln_f``), so that its output is the input of layer ``start``.
    """
    arch = architecture_of(backbone)
    layers = layers_of(backbone, arch)
    parent_path, _, name = arch.layers.rpartition(".")
    parent = backbone.get_submodule(parent_path) if parent_path else backbone
    if hidden is None:
        kept = list(layers)[:start]
    elif arch.skip_in_place:
        kept = [_PassThrough() for _ in range(start)] + list(layers)[start:]
    else:
        kept = list(layers)[start:]
    handle = None
    if hidden is not None and start < len(layers):

        def replace_input(module, args, kwargs):
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handle = layers[start].register_forward_pre_hook(replace_input, with_kwargs=True)
    final_norm = arch.final_norm if hidden is None else None
    if final_norm is not None:
        norm = backbone.get_submodule(final_norm)
        backbone._modules[final_norm] = nn.Identity()
    parent._modules[name] = nn.ModuleList(kept)
    try:
        yield
    finally:
        parent._modules[name] = layers
        if final_norm is not None:
            backbone._modules[final_norm] = norm
        if handle is not None:
            handle.remove()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Pooling of ``hidden`` (batch, seq, dim): first token (``cls``), attention-masked mean (``mean``), or the
    last token the attention mask keeps (``last``: right- or left-padded alike)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        if attention_mask is None:
            return hidden[:, -1]
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (positions * attention_mask.to(positions.dtype)).argmax(dim=-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def pooled(backbone: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, kind: str) -> torch.Tensor:
    """What a probe's head reads from ``hidden``, the output of the layers: through the final norm, then pooled
    (or through the backbone's pooler)."""
    arch = architecture_of(backbone)
    if arch.final_norm is not None:
        hidden = backbone.get_submodule(arch.final_norm)(hidden)
    if kind == "pooler":
        return backbone.get_submodule(arch.pooler)(hidden)
    return pool(hidden, attention_mask, kind)


def _collate_tokens(tokenizer, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return DataCollatorWithPadding(tokenizer)([{k: r[k] for k in MODEL_INPUTS if k in r} for r in rows])


@torch.no_grad()
def compute_cache(
    backbone: nn.Module, features: datasets.Dataset, needs: Iterable[Need], tokenizer, batch_size: int = 128
) -> dict[Need, list[torch.Tensor]]:
    """Every one of ``needs`` for ``features`` in ONE no-grad pass of the frozen ``backbone`` (eval mode): the
    hidden states entering a layer (one unpadded tensor per example) or pooled features (one vector per example).

    Only the layers below the deepest need run. Examples go through in batches of similar length (returned in
    their own order), so that little of a batch is padding (scripts/bench_cache_fill.py measures it)."""
    needs = sorted(set(needs))
    arch = architecture_of(backbone)
    layers = list(layers_of(backbone, arch))
    top = max(need.depth for need in needs)
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for depth in {need.depth for need in needs if need.depth < top}:

        def capture(module, args, kwargs, depth=depth):
            captured[depth] = args[0] if args else kwargs["hidden_states"]

        handles.append(layers[depth].register_forward_pre_hook(capture, with_kwargs=True))
    lengths = [len(ids) for ids in features["input_ids"]]
    order = sorted(range(len(features)), key=lengths.__getitem__)
    outputs: dict[Need, list[torch.Tensor | None]] = {need: [None] * len(features) for need in needs}
    try:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = _collate_tokens(tokenizer, [features[i] for i in indices])
            mask = batch["attention_mask"].to(device)
            inputs = arch.inputs(batch["input_ids"].to(device), mask, batch.get("token_type_ids"))
            if inputs.get("token_type_ids") is not None:
                inputs["token_type_ids"] = inputs["token_type_ids"].to(device)
            with run_from_layer(backbone, top, None):  # layers ..top-1, no final norm
                captured[top] = backbone(**inputs).last_hidden_state
            for need in needs:
                hidden = captured[need.depth]
                if need.kind == "hidden":
                    hidden, keep = hidden.float().cpu(), mask.bool().cpu()
                    rows = [hidden[j][keep[j]] for j in range(len(indices))]  # unpadded, left or right
                else:
                    rows = pooled(backbone, hidden, mask, need.kind).float().cpu()
                for i, row in zip(indices, rows):
                    outputs[need][i] = row
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)
    return outputs


class ByIdentity:
    """Values keyed by an object's identity, for as long as the object lives. A dict keyed by ``id()`` is not
    enough: once an object is freed its id is reused, and a new dataset would be handed the value of a dead one
    (here: another split's input digest, so the cache key, so another split's tensors: a split would be trained
    on the cached tensors of another)."""

    def __init__(self) -> None:
        self._values: dict[int, tuple[weakref.ref, Any]] = {}

    def get(self, obj: Any, default: Any = None) -> Any:
        entry = self._values.get(id(obj))
        return entry[1] if entry is not None and entry[0]() is obj else default

    def set(self, obj: Any, value: Any) -> None:
        key = id(obj)

        def forget(ref: weakref.ref) -> None:  # when obj dies (before its id can be reused)
            if self._values.get(key, (None,))[0] is ref:
                del self._values[key]

        self._values[key] = (weakref.ref(obj, forget), value)

    def __len__(self) -> int:
        return len(self._values)


class FrozenPrefixCache:
    """The cached tensors of one frozen backbone, for every split and :class:`Need` a process's runs read.

    ``backbone`` is the pretrained model as loaded (never trained: the runs train copies of it); the key of a
    need is derived from its parameters below the need's layer, so it also holds for a run whose model was
    truncated (``--num_hidden_layers``) or modified above that layer. Tensors stay in memory once read or
    computed, so the runs of one process read the disk at most once per split and need.
    """

    def __init__(self, backbone: nn.Module, directory: str | os.PathLike, dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"cache dtype {dtype!r} is not valid; choose one of {', '.join(DTYPES)}.")
        self.backbone = backbone
        self.directory = Path(directory)
        self.dtype_name, self.dtype = dtype, DTYPES[dtype]
        self.planned: set[Need] = set()
        self.planned_for = ByIdentity()  # dataset -> the needs planned for it alone
        self.passes = 0
        """How many passes over a split this object computed (0: everything came from disk or memory)."""
        self.memory: dict[str, list[torch.Tensor]] = {}
        self.memory_only = False
        """Set once a write to the cache folder failed: later fills are not tried on disk."""
        self._param_digests: list[tuple[str, str]] | None = None
        self._input_digests = ByIdentity()  # dataset -> the digest of its inputs

    def plan(self, need: Need, features: datasets.Dataset | None = None) -> None:
        """Announce that a run will read ``need`` (of every split, or of ``features`` only): the first fill of a
        split computes it together with the rest."""
        if features is None:
            self.planned.add(need)
        else:
            self.planned_for.set(features, self.planned_for.get(features, set()) | {need})

    def _frozen_digest(self, depth: int) -> str:
        arch = architecture_of(self.backbone)
        if self._param_digests is None:
            self._param_digests = [(n, digest(p)) for n, p in self.backbone.named_parameters()]
        upper = tuple(f"{arch.layers}.{i}." for i in range(depth, len(layers_of(self.backbone, arch))))
        return digest([d for n, d in self._param_digests if not n.startswith(upper)])

    def _inputs_digest(self, features: datasets.Dataset) -> str:
        known = self._input_digests.get(features)
        if known is None:
            columns = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in features.column_names]
            known = digest(
                *(
                    torch.tensor([t for row in features[c] for t in row] + [len(row) for row in features[c]])
                    for c in columns
                )
            )
            self._input_digests.set(features, known)
        return known

    def key(self, features: datasets.Dataset, need: Need) -> str:
        """Everything that determines the cached tensors: the config, frozen parameters below the layer, inputs,
        layer, kind and stored dtype."""
        return digest(
            CACHE_FORMAT, self._config(), need.depth, need.kind, self.dtype_name,
            self._frozen_digest(need.depth), self._inputs_digest(features),
        )  # fmt: skip

    def _config(self) -> dict[str, Any]:
        """The backbone's config as far as it decides what the frozen layers compute (activation, norm epsilon,
        attention and position settings): a copy of a model with the same weights but another config is another
        cache."""
        config = self.backbone.config.to_dict()
        return {k: v for k, v in config.items() if not k.startswith("_") and k not in CONFIG_NOT_IN_KEY}

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def _load(self, key: str, count: int) -> list[torch.Tensor] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = read_tensors(path, count, self.dtype)
        except (SafetensorError, CacheFileError, KeyError, OSError) as err:
            logger.warning("Frozen-prefix cache %s is unusable (%s); rebuilding it.", path, err)
            return None
        logger.info("Frozen-prefix cache hit: %s", path)
        return tensors

    def _store(self, key: str, tensors: list[torch.Tensor]) -> None:
        """Write a computed cache to disk; where that fails (a full disk, a read-only folder) it stays in memory for
        this process only: the cache is an optimisation, never a reason for a run to fail."""
        if self.memory_only:
            return
        try:
            write_tensors(self.path(key), key, tensors)
        except OSError as err:
            self.memory_only = True
            logger.warning("Frozen-prefix cache: cannot write %s (%s); kept in memory for this process only.",
                           self.directory, err)  # fmt: skip

    def get(self, features: datasets.Dataset, need: Need, tokenizer) -> list[torch.Tensor]:
        """The cached tensors of ``need`` for ``features``: from memory, disk, or one pass that also computes every
        other planned need of this split missing from both."""
        key = self.key(features, need)
        if key not in self.memory:
            planned = self.planned | self.planned_for.get(features, set()) | {need}
            wanted = {n: self.key(features, n) for n in sorted(planned)}
            missing = []
            for other, other_key in wanted.items():
                if other_key not in self.memory:
                    loaded = self._load(other_key, len(features))
                    if loaded is None:
                        missing.append(other)
                    elif other == need:
                        self.memory[other_key] = loaded
            if missing:
                logger.info("Filling the frozen-prefix cache in one pass: %s", ", ".join(map(str, missing)))
                self.passes += 1
                for other, tensors in compute_cache(self.backbone, features, missing, tokenizer).items():
                    tensors = [t.to(self.dtype) for t in tensors]
                    self.memory[wanted[other]] = tensors
                    self._store(wanted[other], tensors)
        tensors = self.memory[key]
        if len(tensors) != len(features):  # a key that does not describe these features: never train on it
            raise RuntimeError(f"frozen-prefix cache {key} holds {len(tensors)} examples for {len(features)}")
        return tensors


class CachedDataset(torch.utils.data.Dataset):
    """Tokenized examples, each with its cached tensor (``cached_hidden`` or, for a probe, ``cached_features``)."""

    def __init__(self, features: datasets.Dataset, cached: list[torch.Tensor], probe: bool) -> None:
        self.rows = features.select_columns([c for c in MODEL_INPUTS if c in features.column_names])
        self.cached = cached
        self.field = "cached_features" if probe else "cached_hidden"
        self.lengths = features["length"] if "length" in features.column_names else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.rows[index], self.field: self.cached[index]}


class CachedCollator:
    """Pads token fields as usual and the cached hidden states to the same length (or stacks pooled features)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = _collate_tokens(self.tokenizer, rows)
        if "cached_features" in rows[0]:
            batch["cached_features"] = torch.stack([r["cached_features"] for r in rows])
        else:
            width = batch["input_ids"].shape[1]
            hidden = [r["cached_hidden"] for r in rows]
            padded = hidden[0].new_zeros(len(hidden), width, hidden[0].shape[-1])
            keep = batch["attention_mask"].bool()
            for i, h in enumerate(hidden):
                padded[i, keep[i]] = h  # where the tokens are, whichever side the padding is on
            batch["cached_hidden"] = padded
        return batch


def cache_datasets(model, named: dict[str, datasets.Dataset], tokenizer, cache: FrozenPrefixCache) -> dict[str, Any]:
    """Wrap each dataset with the cached tensors ``model`` reads (a model built with ``reads_cache``, whose
    ``frozen_prefix`` is the need's layer); ``named`` unchanged when there is nothing to cache."""
    need = need_of(model)
    if need is None:
        logger.warning("--cache_frozen_prefix: layer 0 (or the embeddings) trains, so there is nothing to cache.")
        return named
    if model.frozen_prefix != need.depth:
        raise ValueError(
            f"The model reads the layers below {model.frozen_prefix}, not the cache's {need.depth}: build it with "
            "reads_cache=True (SequenceClassifier, build_classifier, peftlab.classifier)."
        )
    probe = need.kind != "hidden"
    return {name: CachedDataset(data, cache.get(data, need, tokenizer), probe) for name, data in named.items()}
