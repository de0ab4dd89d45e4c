"""The README's commands are the ones CI and these tests run: its install and test commands are those of
``.ci/run``, its Python block runs as written, and its quick-start runs (shrunk) print the summary it shows."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_GLUE, requires_shared_glue

README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments cut."""
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


def test_the_install_and_test_commands_are_those_ci_runs():
    install = commands(blocks("bash")[0])
    ci = [line.split("  #")[0].strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert install[0] == "pip install -r requirements.txt -e ."
    quiet = [[t for t in line.split() if t != "-q"] for line in ci]  # CI installs quietly
    assert ["python", "-m", *shlex.split(install[0])] in quiet
    assert install[1] == "python -m pytest -q" and install[1] in ci
    assert any(line.startswith("mkdocs build --strict") for line in ci)  # the manual the README links to


def test_the_readme_headings_put_install_quick_start_methods_and_the_reproduction_first():
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    assert headings[:5] == ["Install", "Quick start: one adapter at one layer", "Methods", "Architectures",
                            "Reproduce the paper"]  # fmt: skip
    assert len(README.splitlines()) <= 200


def test_the_readme_python_block_runs_as_written(tmp_path, monkeypatch):
    (block,) = blocks("python")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "my_run" / "model.safetensors").is_file()


def quick_start() -> list[list[str]]:
    return [shlex.split(c) for b in blocks("bash") for c in commands(b) if c.startswith("peftlab train")]


def test_the_quick_start_is_the_papers_adapter_and_full_fine_tuning_on_one_task():
    adapter, full = quick_start()
    assert adapter[adapter.index("--method") + 1] == "adapter@2" and "--cache_frozen_prefix" in adapter
    assert full[full.index("--method") + 1] == "full"
    for command in (adapter, full):
        assert command[command.index("--protocol") + 1] == "paper"
        assert command[command.index("--task_name") + 1] == "mrpc"


@pytest.mark.slow
@requires_shared_glue
@pytest.mark.parametrize("which", [0, 1], ids=["adapter", "full"])
def test_the_quick_start_runs_and_ends_with_the_summary_shown(tmp_path, which):
    """The README's command, on a few dozen examples and one epoch: the summary's lines are the README's."""
    command = quick_start()[which]
    shrunk = [*command[2:], "--glue_dir", str(SHARED_GLUE), "--output_dir", str(tmp_path / "run"),
              "--frozen_cache_dir", str(tmp_path / "cache"), "--max_train_samples", "32", "--max_eval_samples", "16",
              "--num_train_epochs", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "peftlab.lab.cli", "train", *shrunk],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = next(b for b in blocks("text")[which:] if "trainable" in b)
    for line in shown.splitlines():
        label = line.split()[0]
        assert re.search(rf"^{label} ", proc.stdout, flags=re.M), f"no {label!r} line in:\n{proc.stdout[-1500:]}"
    assert (tmp_path / "run" / "all_results.json").is_file()
