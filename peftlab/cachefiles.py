"""The frozen-prefix cache's files: one safetensors file per split and need, named by its key, holding every
example's tensor in one array cut by offsets, with the key and a checksum over every stored tensor in its
metadata; a file whose key, checksum, dtype or size does not match is refused (:class:`CacheFileError`), and a
file is written through a temporary one and a rename, so a crash never leaves half of one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger("peftlab.cache")


def digest(*parts: Any) -> str:
    sha = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            sha.update(part.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        else:
            sha.update(json.dumps(part, sort_keys=True, default=str).encode())
    return sha.hexdigest()


class CacheFileError(ValueError):
    """A cache file that cannot be used as it is (damaged, or not the file its name says)."""


def read_tensors(path: Path, count: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Read a cache file, refusing one whose key, checksum (over every stored tensor), dtype or size does not
    match."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
        data, offsets = handle.get_tensor("data"), handle.get_tensor("offsets")
    if metadata.get("key") != path.stem:
        raise CacheFileError(f"its key {metadata.get('key')!r} is not its file name")
    if metadata.get("sha256") != digest(data, offsets):
        raise CacheFileError("checksum mismatch")
    if data.dtype != dtype:
        raise CacheFileError(f"it holds {data.dtype}, expected {dtype}")
    if offsets.dtype != torch.long or len(offsets) != count + 1 or int(offsets[0]) != 0:
        raise CacheFileError(f"it holds {len(offsets) - 1} examples, expected {count}")
    if int(offsets[-1]) != data.shape[0] or bool((offsets[1:] < offsets[:-1]).any()):
        raise CacheFileError("its offsets do not cut its data into examples")
    if metadata.get("sequence") == "True":
        return [data[offsets[i] : offsets[i + 1]] for i in range(count)]
    return list(data)


def write_tensors(path: Path, key: str, tensors: list[torch.Tensor]) -> None:
    sequence = tensors[0].dim() == 2
    data = torch.cat(tensors) if sequence else torch.stack(tensors)
    lengths = torch.tensor([t.shape[0] if sequence else 1 for t in tensors])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = {"key": key, "sha256": digest(data, offsets), "sequence": str(sequence)}
    try:
        save_file({"data": data, "offsets": offsets}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never half a file left behind (a full disk)
        raise
    logger.info("Frozen-prefix cache written: %s (%.1f MB)", path, path.stat().st_size / 2**20)
