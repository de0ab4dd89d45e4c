"""Loading GLUE (local TSV or parquet, or the hub) and user files into ``datasets.Dataset`` objects.

Every loader returns datasets with the task's text fields (HuggingFace names), an integer ``idx`` and, for
labelled splits, a ``label`` column holding class ids (``int``) or scores (``float`` for STS-B). All checks run
here, before any model is loaded, and name the file, the line and the valid values when something is wrong.
"""

from __future__ import annotations

import csv
import glob
import hashlib
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
from peftlab.glue.reading import INDEX, read_rows, read_text
from peftlab.glue.tasks import AX, HUB_DATASET, GlueTask
from peftlab.glue.userfiles import read_user_file, records_to_dataset, user_task

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
    """Read one GLUE TSV file in its original format (no quote processing: GLUE text holds stray quotes). Every row
    must have exactly the header's number of fields: one more means a tab inside a text, which would cut it short."""
    path = Path(path)
    rows = read_rows(path, read_text(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    if not rows:
        raise DataError(f"{path} is empty.")
    if task.headerless_tsv_columns and task.tsv_text_columns[0] not in rows[0][1]:
        header = list(task.headerless_tsv_columns)
    else:
        header, rows = rows[0][1], rows[1:]
    missing = [c for c in task.tsv_text_columns if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} for task {task.name}; found {header}. "
            f"A {task.name} TSV needs {list(task.tsv_text_columns)}"
            + (f" and, when labelled, {task.tsv_label_column!r}." if task.tsv_label_column else ".")
        )
    if not rows:
        raise DataError(f"{path} has a header line and no rows: it holds no {task.name} examples.")
    text_pos = [header.index(c) for c in task.tsv_text_columns]
    label_pos = header.index(task.tsv_label_column) if task.tsv_label_column in header else None
    index_pos = header.index("index") if "index" in header else None
    columns: dict[str, list[Any]] = {name: [] for name in task.text_fields}
    labels: list[int | float] = []
    ids: list[int] = []
    for offset, (line, row) in enumerate(rows):
        if len(row) != len(header):
            why = "a text holding a tab" if len(row) > len(header) else "a missing field"
            raise DataError(
                f"{path}, line {line}: {len(row)} tab-separated fields, expected {len(header)} ({header}); "
                f"{why}? Every row needs exactly one field per column."
            )
        for name, pos in zip(task.text_fields, text_pos):
            columns[name].append(row[pos])
        if label_pos is not None:
            labels.append(_label_from_text(task, row[label_pos], f"{path}, line {line}"))
        ids.append(int(row[index_pos]) if index_pos is not None and INDEX.fullmatch(row[index_pos]) else offset)
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
    if len(data) == 0:
        raise DataError(f"{path} has no rows: it holds no {task.name} examples.")
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


def _hub_hint() -> str:
    """How to use the hub instead of a folder, or nothing where this process is told it is offline."""
    if datasets.config.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE:
        return ""
    return f"; or use the hub dataset {HUB_DATASET} (needs network access): leave --glue_dir and GLUE_DIR unset"


def _sources_hint(glue_dir: Path) -> str:
    sources = glue_dir / "SOURCES.md"
    return f" ({sources} says where each file comes from)" if sources.is_file() else ""


def check_task_folder(task: GlueTask, glue_dir: str | os.PathLike) -> None:
    """A GLUE folder without the task's folder is an error that says which folder to add, or which --glue_dir to
    give when the one given is a task folder itself or holds the task under another spelling."""
    root = Path(glue_dir)
    folder = root / task.dirname
    if folder.is_dir():
        return
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    same = [name for name in names if name.lower().replace("-", "") == task.dirname.lower().replace("-", "")]
    if same:
        fix = f"rename {root / same[0]} to {folder} (folder names are case-sensitive)"
    elif root.name.lower().replace("-", "") == task.dirname.lower().replace("-", "") and root.parent != root:
        fix = f"--glue_dir {root.parent} (the folder above it, which holds {task.dirname}/)"
    else:
        fix = (
            f"put the {task.name} files in {folder}/ ({', '.join(p for split in task.splits.values() for p in split)})"
            f"{_sources_hint(root)}, or point --glue_dir at a GLUE folder that has {task.dirname}/"
        )
    found = f" (it holds {', '.join(names)})" if names else ""
    raise DataError(f"--glue_dir {root} has no {task.dirname} folder for {task.name}{found}. Fix: {fix}{_hub_hint()}.")


def _missing_train_message(task: GlueTask, glue_dir: str | os.PathLike) -> str:
    """What to do when ``task`` has no train file under ``glue_dir``: only fixes that work with the files there."""
    folder = Path(glue_dir) / task.dirname
    options = [f"put the original train file at {folder / task.splits['train'][0]}{_sources_hint(Path(glue_dir))}"]
    labelled = [split for split in task.eval_splits if resolve_split_file(task, glue_dir, split) is not None]
    if len(labelled) > 1:
        options.append(f"train on a labelled split: --train_split {labelled[1]} (then evaluated on {labelled[0]})")
    if labelled:
        options.append(
            f"train on part of a labelled split: --train_split {labelled[0]} --split_dev 0.25 (trains on 75% of it, "
            "evaluates on the rest)"
        )
    return f"Task {task.name} has no train split in {folder}. Fix: " + "; or ".join(options) + _hub_hint() + "."


def _split_off(data: datasets.Dataset, split_dev: float, seed: int, name: str) -> tuple[datasets.Dataset, ...]:
    """``data`` cut by a seeded shuffle into what trains and the held-out fraction ``split_dev``; a cut that leaves
    either part empty is an error, not an empty training or evaluation set."""
    if not 0.0 < split_dev < 1.0:
        raise DataError(f"--split_dev {split_dev} must be a fraction strictly between 0 and 1, e.g. 0.25.")
    try:
        parts = data.train_test_split(test_size=split_dev, seed=seed, shuffle=True)
    except ValueError:
        parts = None
    if parts is None or len(parts["train"]) == 0 or len(parts["test"]) == 0:
        raise DataError(
            f"--split_dev {split_dev:g} of the {len(data)} examples of {name} leaves no example to train or to "
            "evaluate on; use more examples or another fraction."
        )
    return parts["train"], parts["test"]


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
    label_type: str = "auto",
) -> RunData:
    """Load every split the run needs, apply the data protocol, and record it.

    ``task`` is a GLUE task, or ``None`` for user files (``train_file`` and friends, whose labels ``label_type``
    reads: see :func:`user_task`).
    """
    if task is None:
        return _load_user_data(
            train_file, validation_file, test_file, do_train, do_eval, do_predict,
            split_dev, split_seed, max_train_samples, max_eval_samples, max_predict_samples, label_type,
        )  # fmt: skip
    if train_split not in task.splits or train_split.startswith("test"):
        valid = [s for s in task.splits if not s.startswith("test")]
        raise DataError(f"--train_split {train_split!r} is not a labelled split of {task.name}; valid: {valid}.")
    if split_dev is not None and not 0.0 < split_dev < 1.0:
        raise DataError(f"--split_dev {split_dev} must be a fraction strictly between 0 and 1, e.g. 0.25.")
    source = f"glue_dir={glue_dir}" if glue_dir else f"hub:{HUB_DATASET}/{task.name}"
    run = RunData(task=task, protocol={"source": source, "train_split": None, "eval_splits": {}, "test_splits": []})
    if glue_dir:
        check_task_folder(task, glue_dir)
    if do_train or split_dev is not None:
        _load_train(run, glue_dir, train_split, split_dev, split_seed)
    if do_eval and split_dev is None:
        _load_eval(run, glue_dir, train_split if run.train is not None else None)
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
        _load_test(run, glue_dir, max_predict_samples)
    run.protocol["sizes"] = {
        **({"train": len(run.train)} if run.train is not None else {}),
        **{f"eval:{k}": len(v) for k, v in run.eval.items()},
        **{f"test:{k}": len(v) for k, (_, v) in run.test.items()},
    }
    return run


def _load(task: GlueTask, glue_dir: str | None, split: str) -> datasets.Dataset:
    return load_glue_split(task, glue_dir, split) if glue_dir else load_hub_split(task, split)


def _load_train(run: RunData, glue_dir: str | None, train_split: str, split_dev: float | None, seed: int) -> None:
    """The training split into ``run`` (less a held-out ``split_dev`` share, then its evaluation split)."""
    task = run.task
    if glue_dir and resolve_split_file(task, glue_dir, train_split) is None:
        if train_split == "train":
            raise DataError(_missing_train_message(task, glue_dir))
        _load(task, glue_dir, train_split)  # raises the "no such file" error
    data = _load(task, glue_dir, train_split)
    if "label" not in data.column_names:
        raise DataError(f"The {train_split} split of {task.name} has no labels; it cannot be trained on.")
    if split_dev is None:
        run.train = data
        run.protocol["train_split"] = train_split
        return
    run.train, run.eval["validation"] = _split_off(data, split_dev, seed, f"{task.name} {train_split}")
    run.protocol["train_split"] = f"{train_split} minus held-out {split_dev:g} (seed {seed})"
    run.protocol["eval_splits"]["validation"] = f"held-out {split_dev:g} of {train_split} (seed {seed})"


def _load_eval(run: RunData, glue_dir: str | None, trained_on: str | None) -> None:
    """The task's evaluation splits into ``run``, less the one it trains on (``trained_on``)."""
    task = run.task
    for split in task.eval_splits:
        if split != trained_on:
            run.eval[split] = _load(task, glue_dir, split)
            run.protocol["eval_splits"][split] = split
    if not run.eval:
        raise DataError(
            f"Nothing left to evaluate on: {task.name} is trained on {trained_on}, its only labelled "
            f"evaluation split. Add --split_dev 0.25 to hold out part of it for evaluation."
        )
    skipped = [s for s in task.eval_splits if s not in run.eval]
    if skipped:
        run.protocol["not_evaluated"] = {s: f"used for training (--train_split {trained_on})" for s in skipped}


def _load_test(run: RunData, glue_dir: str | None, limit: int | None) -> None:
    """The test splits into ``run`` (MNLI's with the AX diagnostic, where its file is there)."""
    task = run.task
    for split in task.test_splits:
        run.test[split] = (task, _take(_load(task, glue_dir, split), limit))
    if task.name == "mnli":
        if glue_dir is None or resolve_split_file(AX, glue_dir, "test") is not None:
            run.test["ax"] = (AX, _take(_load(AX, glue_dir, "test"), limit))
        else:
            logger.warning("No AX diagnostic file under %s/diagnostic: AX.tsv will not be written.", glue_dir)
    run.protocol["test_splits"] = list(run.test)


def data_digest(run: RunData) -> str:
    """A digest of every example the run trains and evaluates on (text, labels and order), so that a checkpoint is
    resumed only on the data it was trained on: an edited file or another ``--max_eval_samples`` gives another."""
    sha = hashlib.sha256()
    parts = ([("train", run.train)] if run.train is not None else []) + sorted(run.eval.items())
    for name, data in parts:
        sha.update(f"{name}:{len(data)}:".encode())
        for batch in data.iter(batch_size=10_000):
            sha.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return sha.hexdigest()[:16]


def _load_user_data(
    train_file, validation_file, test_file, do_train, do_eval, do_predict,
    split_dev, split_seed, max_train_samples, max_eval_samples, max_predict_samples, label_type,
) -> RunData:  # fmt: skip
    if train_file is None:
        raise DataError("--train_file is required without --task_name: it fixes the text columns and label set.")
    train_data = read_user_file(train_file)
    task = user_task(train_data, label_type)
    run = RunData(task=task, protocol={"source": "files", "train_split": None, "eval_splits": {}, "test_splits": []})
    run.protocol["label_type"] = "regression" if task.is_regression else "classification"
    run.protocol["text_columns"] = list(task.text_fields)
    logger.info("%s: text columns %s, labels as %s.", train_file, list(task.text_fields), run.protocol["label_type"])
    train = records_to_dataset(task, train_data, labelled=True)
    if split_dev is not None:
        train, held_out = _split_off(train, split_dev, split_seed, train_file)
    if do_train:
        run.train = _take(train, max_train_samples)
        run.protocol["train_split"] = train_file if split_dev is None else f"{train_file} minus held-out {split_dev:g}"
    if do_eval:
        if split_dev is not None:
            run.eval["validation"] = _take(held_out, max_eval_samples)
            run.protocol["eval_splits"]["validation"] = f"held-out {split_dev:g} of {train_file} (seed {split_seed})"
        elif validation_file is not None:
            data = records_to_dataset(task, read_user_file(validation_file), labelled=True)
            run.eval["validation"] = _take(data, max_eval_samples)
            run.protocol["eval_splits"]["validation"] = validation_file
        else:
            raise DataError("--do_eval with --train_file needs --validation_file or --split_dev.")
    if do_predict:
        if test_file is None:
            raise DataError("--do_predict with --train_file needs --test_file.")
        data = records_to_dataset(task, read_user_file(test_file))
        run.test["test"] = (task, _take(data, max_predict_samples))
        run.protocol["test_splits"] = [test_file]
    return run
