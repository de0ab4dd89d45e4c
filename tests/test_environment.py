"""The conda environment and requirements.txt name the same pinned packages."""

from __future__ import annotations

import re

from conftest import REPO


def pins(lines: list[str]) -> set[str]:
    return {line.strip() for line in lines if re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^\s]+", line.strip())}


def test_environment_yml_matches_requirements():
    requirements = pins((REPO / "requirements.txt").read_text().splitlines())
    conda = pins(
        [line.strip().removeprefix("- ") for line in (REPO / "env" / "environment.yml").read_text().splitlines()]
    )
    assert requirements, "requirements.txt pins nothing"
    assert conda == requirements


def test_every_requirement_is_pinned_exactly():
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert "==" in line, f"requirements.txt: {line!r} is not pinned with =="
