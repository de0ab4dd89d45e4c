"""Small file helpers: every result file is written atomically, so a crash never leaves half a file; a folder a run
will write is checked for writability and free space before the run starts, locked while the run writes it, and
gets the run's log."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import transformers

from peftlab.errors import ConfigError, PeftlabError

logger = logging.getLogger("peftlab")

LOCK_NAME = ".lock"


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


def setup_logging(training_args) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
            datefmt="%H:%M:%S",
            handlers=[logging.StreamHandler(sys.stdout)],
        )
    level = training_args.get_process_log_level()
    logger.setLevel(level if level != logging.WARNING else logging.INFO)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))


@contextmanager
def run_log(output_dir: Path):
    """Copy this run's log lines (ours and the Trainer's) into ``<output_dir>/log.txt`` while it runs."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(output_dir / "log.txt", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(name)s - %(message)s", "%H:%M:%S"))
    targets = [logger, transformers.utils.logging.get_logger()]
    for target in targets:
        target.addHandler(handler)
    try:
        yield
    finally:
        for target in targets:
            target.removeHandler(handler)
        handler.close()


class OutputLocked(PeftlabError):
    """Another live process is writing this run's output folder."""


@contextmanager
def output_lock(output_dir: Path):
    """Hold an exclusive lock on the output folder while the run writes it (the OS releases it when the process
    dies, however it dies): a second process on the same folder stops at once instead of clobbering it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputLocked(
            f"--output_dir {str(output_dir)!r} is being written by another running process; wait for it to end "
            "or choose another folder."
        ) from None
    try:
        yield
    finally:
        handle.close()


def is_locked(output_dir: Path) -> bool:
    """Whether a live process holds ``output_dir``'s lock now (a run another sweep driver is training)."""
    path = Path(output_dir) / LOCK_NAME
    if not path.is_file():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def write_history(output_dir: Path, event: str) -> None:
    """One line per start and end of the run in ``history.log``: a run done twice shows it."""
    with open(output_dir / "history.log", "a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {event} pid={os.getpid()} host={platform.node()}\n")
