"""Every data file in ../shared/glue loads with exactly the row count its SOURCES.md states."""

from __future__ import annotations

import re

import pytest
from conftest import SHARED_GLUE, requires_shared_glue

from peftlab.glue.data import read_split_file
from peftlab.glue.tasks import AX, TASKS

TASK_BY_DIR = {task.dirname: task for task in [*TASKS.values(), AX]}


def sources_rows() -> list[tuple[str, int]]:
    """(file, rows) for each split file in the SOURCES.md table (the MSR source files are not splits)."""
    text = (SHARED_GLUE / "SOURCES.md").read_text(encoding="utf-8")
    rows = []
    for match in re.finditer(r"^\| ([\w.-]+/[\w.-]+) \| (\d+) \|", text, flags=re.MULTILINE):
        name, count = match.group(1), int(match.group(2))
        if name.endswith((".tsv", ".parquet")) and not name.startswith("MRPC/dev_ids"):
            rows.append((name, count))
    return rows


@requires_shared_glue
def test_sources_table_lists_the_files():
    names = {name for name, _ in sources_rows()}
    assert {"RTE/train.tsv", "CoLA/dev.tsv", "MNLI/validation_matched-00000-of-00001.parquet"} <= names


@requires_shared_glue
@pytest.mark.parametrize("name,count", sources_rows() if SHARED_GLUE.is_dir() else [])
def test_split_loads_with_stated_row_count(name, count):
    task = TASK_BY_DIR[name.split("/")[0]]
    data = read_split_file(task, SHARED_GLUE / name)
    assert len(data) == count
    if "label" in data.column_names and not task.is_regression:
        assert set(data["label"]) <= set(range(task.num_labels))
