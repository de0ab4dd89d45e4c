"""Frozen-prefix activation cache: compute the frozen bottom of the network once, train only the top.

When nothing in layers ``0..k-1`` (nor the embeddings) trains, the hidden states entering layer ``k`` are the same
in every epoch, for every method and seed that trains at layer ``k`` or above. They are computed once (frozen
layers in eval mode: no dropout there), kept per example without padding, and stored on disk under a key made
of everything that determines them: the frozen parameters, the token ids, the layer (and, for a probe, the
pooling). Training then runs only layers ``k..L-1`` on them. When no layer trains at all (a probe), the pooled
features are cached and the backbone is skipped entirely.

Trade-off: memory and disk of ``tokens x hidden`` floats per split (about 270 MB for RTE's train set on the
384-wide MiniLM), and no dropout below layer ``k``; in exchange, each step skips ``k`` layers forward and the
first pass is a cheap no-grad one that a sweep pays once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import DataCollatorWithPadding

from peftlab.architectures import architecture_of, layers_of
from peftlab.errors import ConfigError
from peftlab.methods import TunerLayer

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "label")


def default_cache_dir() -> Path:
    return Path(os.environ.get("PEFTLAB_CACHE", Path.home() / ".cache" / "peftlab")) / "frozen_prefix"


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters()) or any(isinstance(m, TunerLayer) for m in module.modules())


def frozen_prefix_depth(backbone: nn.Module) -> int:
    """Number of bottom layers in which nothing trains (0 when the embeddings train or nothing can be cached)."""
    arch = architecture_of(backbone)
    layers = layers_of(backbone, arch)
    layer_params = {id(p) for p in layers.parameters()}
    # What sits below the layers (the embeddings) must be frozen; the pooler sits above them and does not matter.
    below = [p for n, p in backbone.named_parameters() if id(p) not in layer_params and not n.startswith("pooler")]
    if any(p.requires_grad for p in below):
        return 0
    if getattr(getattr(backbone, "encoder", None), "conv", None) is not None:
        return 0  # DeBERTa-v2's convolution after the first layer depends on the layer index
    for index, layer in enumerate(layers):
        if _trains(layer):
            return index
    return len(layers)


@contextmanager
def run_from_layer(backbone: nn.Module, start: int, hidden: torch.Tensor | None):
    """Within the block, the backbone runs only layers ``start..``; ``hidden`` replaces the input of ``start``.

    With ``hidden=None`` (used to fill the cache) it runs layers ``..start-1`` instead, so that its output is the
    input of layer ``start``.
    """
    arch = architecture_of(backbone)
    layers = layers_of(backbone, arch)
    parent_path, _, name = arch.layers.rpartition(".")
    parent = backbone.get_submodule(parent_path) if parent_path else backbone
    kept = list(layers)[start:] if hidden is not None else list(layers)[:start]
    handle = None
    if hidden is not None and kept:

        def replace_input(module, args, kwargs):
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handle = kept[0].register_forward_pre_hook(replace_input, with_kwargs=True)
    parent._modules[name] = nn.ModuleList(kept)
    try:
        yield
    finally:
        parent._modules[name] = layers
        if handle is not None:
            handle.remove()


def _digest(*parts: Any) -> str:
    sha = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            sha.update(part.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        else:
            sha.update(json.dumps(part, sort_keys=True, default=str).encode())
    return sha.hexdigest()


def cache_key(model: nn.Module, features: datasets.Dataset, depth: int) -> str:
    """Everything that determines the cached tensors: frozen parameters below ``depth``, inputs, layer, pooling."""
    backbone = model.backbone
    layers = layers_of(backbone, architecture_of(backbone))
    upper = {id(p) for layer in list(layers)[depth:] for p in layer.parameters()}
    frozen = [p for p in backbone.parameters() if id(p) not in upper]
    columns = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in features.column_names]
    inputs = [
        torch.tensor([t for row in features[c] for t in row] + [len(row) for row in features[c]]) for c in columns
    ]
    probe = depth == len(layers)
    return _digest(
        CACHE_FORMAT, backbone.config.model_type, depth, model.head_config.pooling if probe else None, *frozen, *inputs
    )


def _collate_tokens(tokenizer, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return DataCollatorWithPadding(tokenizer)([{k: r[k] for k in MODEL_INPUTS if k in r} for r in rows])


@torch.no_grad()
def compute_cache(model: nn.Module, features: datasets.Dataset, depth: int, tokenizer, batch_size: int = 128):
    """Hidden states entering layer ``depth`` (one unpadded tensor per example), or pooled features for a probe.

    Examples go through in batches of similar length (returned in their own order): padded to the longest of a
    batch in the data's order, GLUE inputs cost up to 3.6 times their real tokens (scripts/bench_cache_fill.py)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probe = depth == len(layers_of(model.backbone, architecture_of(model.backbone)))
    lengths = [len(ids) for ids in features["input_ids"]]
    order = sorted(range(len(features)), key=lengths.__getitem__)
    outputs: list[torch.Tensor | None] = [None] * len(features)
    try:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = _collate_tokens(tokenizer, [features[i] for i in indices])
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            if probe:
                rows = model.pooled_features(**batch).float().cpu()
            else:
                with run_from_layer(model.backbone, depth, None):
                    hidden = model.backbone(**batch).last_hidden_state.float().cpu()
                rows = [hidden[j, : lengths[i]] for j, i in enumerate(indices)]
            for i, row in zip(indices, rows):
                outputs[i] = row
    finally:
        model.train(was_training)
    return outputs


def _read(path: Path, count: int) -> list[torch.Tensor]:
    """Read a cache file, refusing one whose key, checksum or size does not match."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
        data, offsets = handle.get_tensor("data"), handle.get_tensor("offsets")
    if metadata.get("key") != path.stem:
        raise ValueError(f"its key {metadata.get('key')!r} is not its file name")
    if metadata.get("sha256") != _digest(data):
        raise ValueError("checksum mismatch")
    if len(offsets) != count + 1 or int(offsets[-1]) != data.shape[0]:
        raise ValueError(f"it holds {len(offsets) - 1} examples, expected {count}")
    if metadata.get("sequence") == "True":
        return [data[offsets[i] : offsets[i + 1]] for i in range(count)]
    return list(data)


def load_or_compute(model, features: datasets.Dataset, depth: int, tokenizer, cache_dir: str | os.PathLike) -> list:
    """The cached tensors for ``features``: from disk when a valid file exists, else computed and stored."""
    key = cache_key(model, features, depth)
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        try:
            tensors = _read(path, len(features))
            logger.info("Frozen-prefix cache hit: %s", path)
            return tensors
        except (SafetensorError, ValueError, KeyError, OSError) as err:
            logger.warning("Frozen-prefix cache %s is unusable (%s); rebuilding it.", path, err)
    tensors = compute_cache(model, features, depth, tokenizer)
    sequence = tensors[0].dim() == 2
    data = torch.cat(tensors) if sequence else torch.stack(tensors)
    lengths = torch.tensor([t.shape[0] if sequence else 1 for t in tensors])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = {"key": key, "sha256": _digest(data), "sequence": str(sequence)}
    save_file({"data": data, "offsets": offsets}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    logger.info("Frozen-prefix cache written: %s (%.1f MB)", path, path.stat().st_size / 2**20)
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
            for i, h in enumerate(hidden):
                padded[i, : h.shape[0]] = h
            batch["cached_hidden"] = padded
        return batch


def cache_datasets(model, named: dict[str, datasets.Dataset], tokenizer, cache_dir) -> tuple[int, dict[str, Any]]:
    """Wrap each dataset with its cache; returns the depth (0: nothing cached) and the wrapped datasets."""
    depth = frozen_prefix_depth(model.backbone)
    if depth == 0:
        logger.warning("--cache_frozen_prefix: layer 0 (or the embeddings) trains, so there is nothing to cache.")
        return 0, named
    probe = depth == len(layers_of(model.backbone, architecture_of(model.backbone)))
    if (
        probe
        and model.head_config.pooling == "pooler"
        and any(p.requires_grad for p in model.backbone.pooler.parameters())
    ):
        raise ConfigError("--cache_frozen_prefix with a trainable pooler: use pooling cls or mean.")
    model.frozen_prefix = depth
    wrapped = {
        name: CachedDataset(data, load_or_compute(model, data, depth, tokenizer, cache_dir), probe)
        for name, data in named.items()
    }
    return depth, wrapped
