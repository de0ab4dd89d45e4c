"""Small file helpers: every result file is written atomically, so a crash never leaves half a file; a folder a run
will write is checked for writability and free space before the run starts."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def nearest_existing(path: str | os.PathLike) -> Path | None:
    """``path`` itself if it exists, else its nearest ancestor that does."""
    for candidate in (Path(path).absolute(), *Path(path).absolute().parents):
        if candidate.exists():
            return candidate
    return None


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Refuse a folder that cannot be made or written (a file in its way, a read-only filesystem, no permission)
    before anything is loaded, instead of failing when the first result is saved."""
    existing = nearest_existing(path)
    if existing is None:
        return
    if not existing.is_dir():
        raise ConfigError(f"{what} {str(path)!r} cannot be made: {str(existing)!r} is a file.")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise ConfigError(f"{what} {str(path)!r} is on a read-only filesystem ({existing}); choose another folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(path)!r} is not writable ({existing} is not writable by this user).")


def check_free_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse to start when the disk under ``path`` has less than ``needed`` bytes free: a full disk found when the
    model is saved loses the whole training."""
    existing = nearest_existing(path)
    free = shutil.disk_usage(existing).free if existing is not None else None
    if free is not None and free < needed:
        raise ConfigError(
            f"{what} {str(path)!r}: {free / 2**20:.0f} MiB free on its disk, and this run writes up to about "
            f"{needed / 2**20:.0f} MiB (weights, checkpoints, logs). Free some space or choose another folder."
        )
