"""Loading GLUE (local TSV or parquet, or the hub) and user files into ``datasets.Dataset`` objects.

Every loader returns datasets with the task's text fields (HuggingFace names), an integer ``idx`` and, for
labelled splits, a ``label`` column holding class ids (``int``) or scores (``float`` for STS-B). All checks run
here, before any model is loaded, and name the file, the line and the valid values when something is wrong.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from peftlab.errors import DataError
from peftlab.glue.tasks import AX, HUB_DATASET, GlueTask

logger = logging.getLogger(__name__)

# GLUE rows can be long (MNLI parse trees); the csv module refuses fields over 128 KiB by default.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


# --------------------------------------------------------------------------------------------------------------
# Files of one split
# --------------------------------------------------------------------------------------------------------------
def resolve_split_file(task: GlueTask, glue_dir: str | os.PathLike, split: str) -> Path | None:
    """Return the file holding ``split`` of ``task`` under ``glue_dir``, or ``None`` when there is none.

    The original GLUE TSV name is preferred; the HuggingFace parquet layout is the fallback.
    """
    if split not in task.splits:
        raise DataError(f"Task {task.name!r} has no split {split!r}. Valid splits: {', '.join(task.splits)}.")
    folder = Path(glue_dir) / task.dirname
    for pattern in task.splits[split]:
        matches = sorted(glob.glob(str(folder / pattern)))
        if len(matches) == 1:
            return Path(matches[0])
        if len(matches) > 1:
            raise DataError(f"Several files match {folder / pattern}: {matches}. Keep one of them.")
    return None


def _label_from_text(task: GlueTask, value: str, where: str) -> int | float:
    value = value.strip()
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            raise DataError(
                f"{where}: label {value!r} is not a number; {task.name} labels are scores in [0, 5]."
            ) from None
        if not 0.0 <= score <= 5.0:
            raise DataError(f"{where}: label {score} is outside [0, 5], the valid range of {task.name} scores.")
        return score
    assert task.label_names is not None
    if task.tsv_labels_are_names:
        if value not in task.label_names:
            raise DataError(f"{where}: label {value!r} is not one of {list(task.label_names)}.")
        return task.label_names.index(value)
    valid = [str(i) for i in range(task.num_labels)]
    if value not in valid:
        raise DataError(f"{where}: label {value!r} is not one of {valid} (ids of {list(task.label_names)}).")
    return int(value)


def read_glue_tsv(task: GlueTask, path: str | os.PathLike) -> datasets.Dataset:
    """Read one GLUE TSV file in its original format (no quote processing: GLUE text holds stray quotes)."""
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise DataError(f"{path} is empty.")
    first_line = 1
    if task.headerless_tsv_columns and task.tsv_text_columns[0] not in rows[0]:
        header = list(task.headerless_tsv_columns)
    else:
        header, rows, first_line = rows[0], rows[1:], 2
    missing = [c for c in task.tsv_text_columns if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} for task {task.name}; found {header}. "
            f"A {task.name} TSV needs {list(task.tsv_text_columns)}"
            + (f" and, when labelled, {task.tsv_label_column!r}." if task.tsv_label_column else ".")
        )
    text_pos = [header.index(c) for c in task.tsv_text_columns]
    label_pos = header.index(task.tsv_label_column) if task.tsv_label_column in header else None
    index_pos = header.index("index") if "index" in header else None
    columns: dict[str, list[Any]] = {name: [] for name in task.text_fields}
    labels: list[int | float] = []
    ids: list[int] = []
    for offset, row in enumerate(rows):
        line = first_line + offset
        if len(row) < len(header):
            raise DataError(f"{path}, line {line}: {len(row)} tab-separated fields, expected {len(header)} ({header}).")
        for name, pos in zip(task.text_fields, text_pos):
            columns[name].append(row[pos])
        if label_pos is not None:
            labels.append(_label_from_text(task, row[label_pos], f"{path}, line {line}"))
        ids.append(int(row[index_pos]) if index_pos is not None and row[index_pos].isdigit() else offset)
    if label_pos is not None:
        columns["label"] = labels
    columns["idx"] = ids
    return datasets.Dataset.from_dict(columns)


def read_glue_parquet(task: GlueTask, path: str | os.PathLike) -> datasets.Dataset:
    """Read one HuggingFace ``nyu-mll/glue`` parquet file; labels of -1 (test splits) mean unlabelled."""
    path = Path(path)
    data = datasets.Dataset(pq.read_table(path))
    missing = [c for c in task.text_fields if c not in data.column_names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} for task {task.name}; found {data.column_names}, "
            f"expected {list(task.text_fields)} plus 'label' and 'idx'."
        )
    if "idx" not in data.column_names:
        data = data.add_column("idx", list(range(len(data))))
    if "label" in data.column_names:
        labels = data["label"]
        if all(label == -1 for label in labels):
            data = data.remove_columns("label")
        else:
            for row, label in enumerate(labels):
                _check_label_id(task, label, f"{path}, row {row}")
    return data.select_columns([*task.text_fields, *(["label"] if "label" in data.column_names else []), "idx"])


def _check_label_id(task: GlueTask, label: Any, where: str) -> None:
    if task.is_regression:
        if not isinstance(label, (int, float)) or not 0.0 <= float(label) <= 5.0:
            raise DataError(f"{where}: label {label!r} is outside [0, 5], the valid range of {task.name} scores.")
    elif label not in range(task.num_labels):
        raise DataError(f"{where}: label {label!r} is not a valid id; valid ids are 0..{task.num_labels - 1}.")


def read_split_file(task: GlueTask, path: str | os.PathLike) -> datasets.Dataset:
    """Read one split file of ``task`` in either GLUE TSV or HuggingFace parquet form."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return read_glue_parquet(task, path)
    if suffix in (".tsv", ".txt"):
        return read_glue_tsv(task, path)
    raise DataError(f"{path}: unsupported GLUE file type {suffix!r}; expected .tsv or .parquet.")


def load_glue_split(task: GlueTask, glue_dir: str | os.PathLike, split: str) -> datasets.Dataset:
    path = resolve_split_file(task, glue_dir, split)
    if path is None:
        looked = ", ".join(str(Path(glue_dir) / task.dirname / p) for p in task.splits[split])
        raise DataError(f"No {split} split for {task.name}: none of {looked} exists.")
    return read_split_file(task, path)


def load_hub_split(task: GlueTask, split: str) -> datasets.Dataset:
    """Load a split from the hub dataset ``nyu-mll/glue`` (needs network access or a warm HF cache)."""
    data = datasets.load_dataset(HUB_DATASET, task.name, split=split)
    if "label" in data.column_names and all(label == -1 for label in data["label"][:100]):
        data = data.remove_columns("label")
    return data


# --------------------------------------------------------------------------------------------------------------
# User files: csv, tsv, json or jsonl
# --------------------------------------------------------------------------------------------------------------
USER_FILE_TYPES = (".csv", ".tsv", ".json", ".jsonl")


def read_user_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a csv/tsv (with header) or json/jsonl file into a list of records, checking every row's width."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in USER_FILE_TYPES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(USER_FILE_TYPES)}.")
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            rows = list(reader)
        if not rows:
            raise DataError(f"{path} is empty; expected a header line and rows.")
        header = rows[0]
        records = []
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise DataError(f"{path}, line {line}: {len(row)} fields, expected {len(header)} ({header}).")
            records.append(dict(zip(header, row)))
        return records
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    records.append(json.loads(raw))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}, line {line}: not valid JSON ({err.msg}).") from None
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}, record {row}: expected a JSON object, got {type(record).__name__}.")
    return records


def text_fields_of(columns: list[str]) -> tuple[str, ...]:
    """Choose the text columns of a user file as HuggingFace's run_glue does."""
    candidates = [c for c in columns if c not in ("label", "idx")]
    if "sentence1" in columns and "sentence2" in columns:
        return ("sentence1", "sentence2")
    if len(candidates) >= 2:
        return tuple(candidates[:2])
    if len(candidates) == 1:
        return (candidates[0],)
    raise DataError(f"No text column found among {columns}; a file needs one or two text columns and 'label'.")


def _parse_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def user_task(train_records: list[dict[str, Any]], path: str) -> GlueTask:
    """Build a task description from a user's training file: regression when labels are non-integer numbers."""
    columns = list(train_records[0]) if train_records else []
    if "label" not in columns:
        raise DataError(f"{path}: no 'label' column; found {columns}.")
    fields = text_fields_of(columns)
    labels = [r.get("label") for r in train_records]
    numbers = [_parse_float(v) for v in labels]
    regression = all(n is not None for n in numbers) and any(
        isinstance(v, float) or (isinstance(v, str) and not v.strip().lstrip("-").isdigit()) for v in labels
    )
    names = None if regression else tuple(sorted({str(v) for v in labels}, key=_label_sort_key))
    return GlueTask(
        name="custom",
        dirname="",
        text_fields=fields,
        tsv_text_columns=fields,
        tsv_label_column="label",
        label_names=names,
        metrics=("pearson", "spearmanr") if regression else ("accuracy",),
        tsv_labels_are_names=True,
        splits={"train": (), "validation": (), "test": ()},
        submission_files={"test": "predictions.tsv"},
        submit_label_names=True,
    )


def _label_sort_key(value: str) -> tuple[int, float | str]:
    number = _parse_float(value)
    return (0, number) if number is not None else (1, value)


def records_to_dataset(task: GlueTask, records: list[dict[str, Any]], path: str) -> datasets.Dataset:
    """Turn user records into a dataset with the task's fields; ``label`` is kept when the file has it."""
    columns: dict[str, list[Any]] = {name: [] for name in task.text_fields}
    has_label = bool(records) and "label" in records[0]
    labels: list[Any] = []
    for row, record in enumerate(records):
        where = f"{path}, record {row + 1}"
        for name in task.text_fields:
            if name not in record:
                raise DataError(f"{where}: missing column {name!r}; found {list(record)}.")
            columns[name].append("" if record[name] is None else str(record[name]))
        if has_label:
            labels.append(_label_from_text(task, str(record.get("label", "")), where))
    if has_label:
        columns["label"] = labels
    columns["idx"] = list(range(len(records)))
    return datasets.Dataset.from_dict(columns)


# --------------------------------------------------------------------------------------------------------------
# The splits of one run, and the protocol that produced them
# --------------------------------------------------------------------------------------------------------------
@dataclass
class RunData:
    """The raw (untokenized) datasets of one run and a record of how they were obtained."""

    task: GlueTask
    train: datasets.Dataset | None = None
    eval: dict[str, datasets.Dataset] = field(default_factory=dict)
    test: dict[str, tuple[GlueTask, datasets.Dataset]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)


def eval_metric_suffix(split: str) -> str:
    """Suffix of metric names for an evaluation split (``_mm`` for MNLI mismatched, as HF's run_glue does)."""
    return "_mm" if split == "validation_mismatched" else ""


def _missing_train_message(task: GlueTask, where: str) -> str:
    labelled = [s for s in task.eval_splits]
    options = []
    if len(labelled) > 1:
        options.append(f"--train_split {labelled[1]} (trains on it and evaluates on {labelled[0]})")
    options.append(f"--train_split {labelled[0]} --split_dev 0.25 (trains on 75% of it, evaluates on the rest)")
    return (
        f"Task {task.name} has no train split in {where}. Put the original train file there (see its SOURCES.md), "
        f"use the hub (leave --glue_dir and GLUE_DIR unset), or train offline on a labelled split: "
        + "; or ".join(options)
        + "."
    )


def _take(data: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return data if limit is None or limit >= len(data) else data.select(range(limit))


def load_run_data(
    task: GlueTask | None,
    *,
    glue_dir: str | None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    do_train: bool,
    do_eval: bool,
    do_predict: bool,
    train_split: str = "train",
    split_dev: float | None = None,
    split_seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_predict_samples: int | None = None,
) -> RunData:
    """Load every split the run needs, apply the data protocol, and record it.

    ``task`` is a GLUE task, or ``None`` for user files (``train_file`` and friends).
    """
    if task is None:
        return _load_user_data(
            train_file, validation_file, test_file, do_train, do_eval, do_predict,
            split_dev, split_seed, max_train_samples, max_eval_samples, max_predict_samples,
        )  # fmt: skip
    source = f"glue_dir={glue_dir}" if glue_dir else f"hub:{HUB_DATASET}/{task.name}"

    def load(t: GlueTask, split: str) -> datasets.Dataset:
        return load_glue_split(t, glue_dir, split) if glue_dir else load_hub_split(t, split)

    if train_split not in task.splits or train_split.startswith("test"):
        valid = [s for s in task.splits if not s.startswith("test")]
        raise DataError(f"--train_split {train_split!r} is not a labelled split of {task.name}; valid: {valid}.")
    if split_dev is not None and not 0.0 < split_dev < 1.0:
        raise DataError(f"--split_dev {split_dev} must be a fraction strictly between 0 and 1, e.g. 0.25.")
    run = RunData(task=task, protocol={"source": source, "train_split": None, "eval_splits": {}, "test_splits": []})
    need_train_split = do_train or split_dev is not None
    if need_train_split:
        if glue_dir and resolve_split_file(task, glue_dir, train_split) is None:
            if train_split == "train":
                raise DataError(_missing_train_message(task, str(Path(glue_dir) / task.dirname)))
            load(task, train_split)  # raises the "no such file" error
        data = load(task, train_split)
        if "label" not in data.column_names:
            raise DataError(f"The {train_split} split of {task.name} has no labels; it cannot be trained on.")
        if split_dev is not None:
            parts = data.train_test_split(test_size=split_dev, seed=split_seed, shuffle=True)
            run.train = parts["train"]
            run.eval["validation"] = parts["test"]
            run.protocol["train_split"] = f"{train_split} minus held-out {split_dev:g} (seed {split_seed})"
            run.protocol["eval_splits"]["validation"] = f"held-out {split_dev:g} of {train_split} (seed {split_seed})"
        else:
            run.train = data
            run.protocol["train_split"] = train_split
    if do_eval and split_dev is None:
        for split in task.eval_splits:
            if need_train_split and split == train_split:
                continue
            run.eval[split] = load(task, split)
            run.protocol["eval_splits"][split] = split
        if not run.eval:
            raise DataError(
                f"Nothing left to evaluate on: {task.name} is trained on {train_split}, its only labelled "
                f"evaluation split. Add --split_dev 0.25 to hold out part of it for evaluation."
            )
        skipped = [s for s in task.eval_splits if s not in run.eval]
        if skipped:
            run.protocol["not_evaluated"] = {s: f"used for training (--train_split {train_split})" for s in skipped}
    if not do_eval:
        run.eval.clear()
        run.protocol["eval_splits"] = {}
    for split, data in list(run.eval.items()):
        if "label" not in data.column_names:
            raise DataError(f"The {split} split of {task.name} has no labels; it cannot be evaluated.")
        run.eval[split] = _take(data, max_eval_samples)
    if run.train is not None:
        run.train = _take(run.train, max_train_samples)
    if do_predict:
        for split in task.test_splits:
            run.test[split] = (task, _take(load(task, split), max_predict_samples))
        if task.name == "mnli":
            ax_ok = glue_dir is None or resolve_split_file(AX, glue_dir, "test") is not None
            if ax_ok:
                run.test["ax"] = (AX, _take(load(AX, "test"), max_predict_samples))
            else:
                logger.warning("No AX diagnostic file under %s/diagnostic: AX.tsv will not be written.", glue_dir)
        run.protocol["test_splits"] = list(run.test)
    run.protocol["sizes"] = {
        **({"train": len(run.train)} if run.train is not None else {}),
        **{f"eval:{k}": len(v) for k, v in run.eval.items()},
        **{f"test:{k}": len(v) for k, (_, v) in run.test.items()},
    }
    return run


def _load_user_data(
    train_file, validation_file, test_file, do_train, do_eval, do_predict,
    split_dev, split_seed, max_train_samples, max_eval_samples, max_predict_samples,
) -> RunData:  # fmt: skip
    if train_file is None:
        raise DataError("--train_file is required without --task_name: it fixes the text columns and label set.")
    train_records = read_user_file(train_file)
    if not train_records:
        raise DataError(f"{train_file} has no rows.")
    task = user_task(train_records, train_file)
    run = RunData(task=task, protocol={"source": "files", "train_split": None, "eval_splits": {}, "test_splits": []})
    train = records_to_dataset(task, train_records, train_file)
    if split_dev is not None:
        parts = train.train_test_split(test_size=split_dev, seed=split_seed, shuffle=True)
        train, held_out = parts["train"], parts["test"]
    if do_train:
        run.train = _take(train, max_train_samples)
        run.protocol["train_split"] = train_file if split_dev is None else f"{train_file} minus held-out {split_dev:g}"
    if do_eval:
        if split_dev is not None:
            run.eval["validation"] = _take(held_out, max_eval_samples)
            run.protocol["eval_splits"]["validation"] = f"held-out {split_dev:g} of {train_file} (seed {split_seed})"
        elif validation_file is not None:
            data = records_to_dataset(task, read_user_file(validation_file), validation_file)
            if "label" not in data.column_names:
                raise DataError(f"{validation_file} has no 'label' column; it cannot be evaluated.")
            run.eval["validation"] = _take(data, max_eval_samples)
            run.protocol["eval_splits"]["validation"] = validation_file
        else:
            raise DataError("--do_eval with --train_file needs --validation_file or --split_dev.")
    if do_predict:
        if test_file is None:
            raise DataError("--do_predict with --train_file needs --test_file.")
        data = records_to_dataset(task, read_user_file(test_file), test_file)
        run.test["test"] = (task, _take(data, max_predict_samples))
        run.protocol["test_splits"] = [test_file]
    return run
