"""User files (``--train_file`` and beside it): csv, tsv, json or jsonl, their text columns found as HF's run_glue
does, their labels read as class names or scores, and a :class:`~peftlab.glue.tasks.GlueTask` made for them."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from peftlab.errors import DataError
from peftlab.glue.reading import NEWLINE, line_at, read_rows, read_text
from peftlab.glue.tasks import GlueTask

logger = logging.getLogger(__name__)

USER_FILE_TYPES = (".csv", ".tsv", ".json", ".jsonl")
LABEL_TYPES = ("auto", "classification", "regression")


@dataclass
class UserFile:
    """The records of a user's data file and the line each starts on (for messages that name the line)."""

    path: str
    records: list[dict[str, Any]]
    lines: list[int]
    columns: list[str]
    """The header of a csv/tsv file; for json, the keys of the first record."""

    def where(self, row: int) -> str:
        return f"{self.path}, line {self.lines[row]}"


def read_user_file(path: str | os.PathLike) -> UserFile:
    """Read a csv/tsv (with header) or json/jsonl file into records, checking the header and every row's width.

    Blank lines of a csv/tsv file are skipped; everything else that is malformed (a byte that is not UTF-8, an
    unclosed quote, a row with too many or too few fields, a nameless or repeated column, invalid JSON, a file
    without rows) is a :class:`DataError` naming the file and the line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in USER_FILE_TYPES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(USER_FILE_TYPES)}.")
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    text = read_text(path)
    if suffix in (".csv", ".tsv"):
        rows = [(line, row) for line, row in read_rows(path, text, delimiter="\t" if suffix == ".tsv" else ",") if row]
        if not rows:
            raise DataError(f"{path} is empty; expected a header line and rows.")
        (header_line, header), rows = rows[0], rows[1:]
        for position, name in enumerate(header, start=1):
            if not name.strip():
                raise DataError(
                    f"{path}, line {header_line}: column {position} of the header has no name; name every column "
                    "(a pandas index column? write the file with index=False)."
                )
            if header.index(name) != position - 1:
                raise DataError(f"{path}, line {header_line}: column {name!r} appears twice in the header.")
        records, lines = [], []
        for line, row in rows:
            if len(row) != len(header):
                raise DataError(f"{path}, line {line}: {len(row)} fields, expected {len(header)} ({header}).")
            records.append(dict(zip(header, row)))
            lines.append(line)
        columns = list(header)
    else:
        if suffix == ".json" and text.lstrip().startswith("["):
            records, lines = _json_array(path, text)
        else:
            records, lines = [], []
            for line, raw in enumerate(NEWLINE.split(text), start=1):
                if raw.strip():
                    try:
                        records.append(json.loads(raw))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}, line {line}: not valid JSON ({err.msg}).") from None
                    lines.append(line)
        for record, line in zip(records, lines):
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {line}: expected a JSON object, got {type(record).__name__}.")
        columns = list(records[0]) if records else []
    if not records:
        raise DataError(f"{path} has no rows: it holds no examples.")
    return UserFile(str(path), records, lines, columns)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_array(path: Path, text: str) -> tuple[list[Any], list[int]]:
    """The items of a JSON array and the line each starts on (``json.loads`` keeps no positions)."""
    decoder = json.JSONDecoder()
    items, lines = [], []
    pos = _JSON_SPACE.match(text, text.index("[") + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                item, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {line_at(text, err.pos)}: not valid JSON ({err.msg}).") from None
            items.append(item)
            lines.append(line_at(text, pos))
            pos = _JSON_SPACE.match(text, end).end()
            if text.startswith(",", pos):
                pos = _JSON_SPACE.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise DataError(f"{path}, line {line_at(text, pos)}: not valid JSON (expected ',' or ']').")
    pos = _JSON_SPACE.match(text, pos).end()
    if pos < len(text):
        raise DataError(f"{path}, line {line_at(text, pos)}: not valid JSON (extra data after the array).")
    return items, lines


def text_fields_of(columns: list[str], path: str = "") -> tuple[str, ...]:
    """Choose the text columns of a user file as HuggingFace's run_glue does."""
    candidates = [c for c in columns if c not in ("label", "idx")]
    if "sentence1" in columns and "sentence2" in columns:
        return ("sentence1", "sentence2")
    if len(candidates) >= 2:
        return tuple(candidates[:2])
    if len(candidates) == 1:
        return (candidates[0],)
    raise DataError(
        f"{path + ': ' if path else ''}no text column among {columns}; a file needs one or two text columns and "
        "'label'."
    )


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity)", re.IGNORECASE)
_MISSING = ("nan", "null", "none", "n/a", "na")


def _label_value(value: Any, where: str) -> str | float:
    """A user's label as a class name (``str``) or a number (``float``). A missing label (empty, null, NaN) is an
    error: it is not a class of its own, and not a score."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise DataError(f"{where}: the label is missing (null); every row of a labelled file needs a label.")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return float(value) if isinstance(value, float) or abs(value) < 2**1023 else math.copysign(math.inf, value)
    if not isinstance(value, str):
        raise DataError(
            f"{where}: the label is a JSON {type(value).__name__}; a label is a class name, a class id or a score."
        )
    text = _text(value, "the label", where).strip()
    if not text or text.lower() in _MISSING:
        raise DataError(f"{where}: the label is missing ({value!r}); every row of a labelled file needs a label.")
    return float(text) if _NUMBER.fullmatch(text) else text


def _text(value: str, what: str, where: str) -> str:
    """``value`` when it is text that can be stored: JSON's ``\\ud800`` escapes give strings that are not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"{where}: {what} holds {value[err.start]!r}, half of a UTF-16 pair, which is no text."
        ) from None
    return value


def _written_as_integer(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()) is not None)


def _class_name(number: float, where: str) -> str:
    if not math.isfinite(number) or number != int(number):
        raise DataError(
            f"{where}: label {number:g} is not a whole number, so it is no class id; class labels are whole numbers "
            "or names (pass --label_type regression to fit the labels as scores)."
        )
    return str(int(number))


def user_task(data: UserFile, label_type: str = "auto") -> GlueTask:
    """The task of a user's training file, from its columns and labels.

    ``label_type`` ``auto`` decides from the labels: names, or whole numbers (``1``, ``1.0``), make a
    classification task whose classes are the distinct values; numbers with a fraction make a regression task
    (pearson, spearmanr). ``classification`` and ``regression`` force the choice. Names and numbers mixed in one
    file, a missing label, or fewer than two classes are errors.
    """
    if label_type not in LABEL_TYPES:
        raise DataError(f"--label_type {label_type!r} is not valid; choose one of {', '.join(LABEL_TYPES)}.")
    if "label" not in data.columns:
        raise DataError(f"{data.path}: no 'label' column; found {data.columns}.")
    fields = text_fields_of(data.columns, data.path)
    raw = [record.get("label") for record in data.records]
    values = [_label_value(value, data.where(row)) for row, value in enumerate(raw)]
    numbers = [row for row, value in enumerate(values) if isinstance(value, float)]
    names = [row for row, value in enumerate(values) if isinstance(value, str)]
    if numbers and names:
        number, name = numbers[0], names[0]
        raise DataError(
            f"{data.path}: labels mix numbers and names ({raw[number]!r} on line {data.lines[number]}, "
            f"{raw[name]!r} on line {data.lines[name]}); write every label one way: all class names, or all "
            "numbers (class ids or scores)."
        )
    whole = all(math.isfinite(values[row]) and values[row] == int(values[row]) for row in numbers)
    regression = label_type == "regression" or (label_type == "auto" and bool(numbers) and not whole)
    if regression:
        for row in range(len(values)):
            _score(values[row], data.where(row))
        label_names = None
        why = "--label_type regression" if label_type == "regression" else "labels with fractions"
        logger.info("%s: %s: a regression task (MSE loss; pearson, spearmanr).", data.path, why)
    else:
        label_names = _class_names(data, label_type, raw, values, numbers, names)
    return GlueTask(
        name="custom",
        dirname="",
        text_fields=fields,
        tsv_text_columns=fields,
        tsv_label_column="label",
        label_names=label_names,
        metrics=("pearson", "spearmanr") if regression else ("accuracy",),
        tsv_labels_are_names=True,
        splits={"train": (), "validation": (), "test": ()},
        submission_files={"test": "predictions.tsv"},
        submit_label_names=True,
    )


def _class_names(data: UserFile, label_type: str, raw: list, values: list, numbers: list[int], names: list[int]):
    """The classes of a classification file, sorted (numbers by value, then names); at least two."""
    classes = {_class_name(values[row], data.where(row)) for row in numbers} | {values[row] for row in names}
    label_names = tuple(sorted(classes, key=_label_sort_key))
    if len(label_names) < 2:
        raise DataError(
            f"{data.path}: every label is {label_names[0]!r}; classification needs at least two classes "
            "(pass --label_type regression if the labels are scores)."
        )
    floats = [row for row in numbers if not _written_as_integer(raw[row])]
    if floats and label_type == "auto":
        logger.warning(
            "%s: labels are whole numbers written as floats (%r on line %d): read as the classes %s of a "
            "classification task. Pass --label_type regression to fit them as scores instead.",
            data.path, raw[floats[0]], data.lines[floats[0]], list(label_names),
        )  # fmt: skip
    return label_names


def _score(value: str | float, where: str) -> float:
    if isinstance(value, str):
        raise DataError(f"{where}: label {value!r} is not a number; the labels of a regression task are scores.")
    if not math.isfinite(value):
        raise DataError(f"{where}: label {value} is not a finite number; a score is any finite number.")
    return value


def _label_sort_key(value: str) -> tuple[int, float | str]:
    return (0, float(value)) if _NUMBER.fullmatch(value) else (1, value)


def user_label(task: GlueTask, value: Any, where: str) -> int | float:
    """A user file's label as the task's class id or score, with the same reading as :func:`user_task`."""
    parsed = _label_value(value, where)
    if task.is_regression:
        return _score(parsed, where)
    assert task.label_names is not None
    name = _class_name(parsed, where) if isinstance(parsed, float) else parsed
    if name not in task.label_names:
        raise DataError(f"{where}: label {value!r} is not one of {list(task.label_names)} (the training file's).")
    return task.label_names.index(name)


def records_to_dataset(task: GlueTask, data: UserFile, *, labelled: bool | None = None) -> datasets.Dataset:
    """Turn user records into a dataset with the task's fields and, when the file has labels, ``label``.

    ``labelled``: ``True`` requires a label on every row (training and evaluation files); ``None`` (test files)
    keeps the labels when the file has any and drops a label column that is empty throughout."""
    columns: dict[str, list[Any]] = {name: [] for name in task.text_fields}
    has_label = "label" in data.columns or any("label" in record for record in data.records)
    if labelled is None and has_label:
        raw = [record.get("label") for record in data.records]
        has_label = any(v is not None and not (isinstance(v, str) and not v.strip()) for v in raw)
    if labelled and not has_label:
        raise DataError(f"{data.path} has no 'label' column; it cannot be trained or evaluated on.")
    labels: list[Any] = []
    for row, record in enumerate(data.records):
        for name in task.text_fields:
            if name not in record:
                raise DataError(f"{data.where(row)}: missing column {name!r}; found {list(record)}.")
            text = record[name]
            if isinstance(text, (dict, list)):
                raise DataError(f"{data.where(row)}: column {name!r} holds a JSON {type(text).__name__}, not a text.")
            columns[name].append("" if text is None else _text(str(text), f"column {name!r}", data.where(row)))
        if has_label:
            labels.append(user_label(task, record.get("label"), data.where(row)))
    if has_label:
        columns["label"] = labels
    columns["idx"] = list(range(len(data.records)))
    return datasets.Dataset.from_dict(columns)
