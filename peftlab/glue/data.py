"""Loading GLUE (local TSV or parquet, or the hub) and user files into ``datasets.Dataset`` objects.

Every loader returns datasets with the task's text fields (HuggingFace names), an integer ``idx`` and, for
labelled splits, a ``label`` column holding class ids (``int``) or scores (``float`` for STS-B). All checks run
here, before any model is loaded, and name the file, the line and the valid values when something is wrong.
"""

from __future__ import annotations

import codecs
import csv
import glob
import hashlib
import io
import json
import logging
import math
import os
import re
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
# Text of a data file
# --------------------------------------------------------------------------------------------------------------
_NEWLINE = re.compile(r"\r\n|\r|\n")
_INDEX = re.compile(r"[0-9]{1,18}")


def line_at(text: str, index: int) -> int:
    """The line (from 1) holding ``text[index]``, counting ``\\n``, ``\\r\\n`` and ``\\r`` as line ends, as the
    csv module reads them (``newline=""``)."""
    return 1 + len(_NEWLINE.findall(text, 0, index))


def read_text(path: str | os.PathLike) -> str:
    """The text of a data file, UTF-8 with or without a BOM. A byte that is not UTF-8, or a NUL byte (a binary or
    UTF-16 file), is a :class:`DataError` naming the file and the line, never a traceback."""
    data = Path(path).read_bytes()
    for bom, encoding in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                          (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):  # fmt: skip
        if data.startswith(bom):
            raise DataError(f"{path}, line 1: the file is {encoding} (it starts with a {encoding} byte-order mark); "
                            "save it as UTF-8.")  # fmt: skip
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if not 0 <= nul < err.start:
            raise DataError(
                f"{path}, line {_byte_line(data, err.start)}: byte 0x{data[err.start]:02x} is not UTF-8; save the "
                "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
            ) from None
    if nul >= 0:
        raise DataError(
            f"{path}, line {_byte_line(data, nul)}: a NUL byte, which no text file holds (UTF-16 or binary?); save "
            "the file as UTF-8 text."
        )
    return text


def _byte_line(data: bytes, index: int) -> int:
    """:func:`line_at` for the bytes of a file (line ends are single bytes in UTF-8)."""
    return 1 + len(re.findall(rb"\r\n|\r|\n", data[:index]))


def read_rows(path: str | os.PathLike, text: str, **dialect: Any) -> list[tuple[int, list[str]]]:
    """Parse delimited ``text`` into ``(line, fields)`` pairs, ``line`` being where the row starts; malformed quoting
    (a quote never closed, text after a closing quote) is a :class:`DataError` naming the file and line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, **dialect)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path}, line {start}: malformed row ({err}); close every quote that opens a field.") from None
    return rows


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
        ids.append(int(row[index_pos]) if index_pos is not None and _INDEX.fullmatch(row[index_pos]) else offset)
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
# User files: csv, tsv, json or jsonl
# --------------------------------------------------------------------------------------------------------------
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
            for line, raw in enumerate(_NEWLINE.split(text), start=1):
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
        classes = {_class_name(values[row], data.where(row)) for row in numbers} | {values[row] for row in names}
        label_names = tuple(sorted(classes, key=_label_sort_key))
        if len(label_names) < 2:
            raise DataError(
                f"{data.path}: every label is {label_names[0]!r}; classification needs at least two classes "
                "(pass --label_type regression if the labels are scores)."
            )
        if numbers and label_type == "auto":
            floats = [row for row in numbers if not _written_as_integer(raw[row])]
            if floats:
                logger.warning(
                    "%s: labels are whole numbers written as floats (%r on line %d): read as the classes %s of a "
                    "classification task. Pass --label_type regression to fit them as scores instead.",
                    data.path, raw[floats[0]], data.lines[floats[0]], list(label_names),
                )  # fmt: skip
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
    source = f"glue_dir={glue_dir}" if glue_dir else f"hub:{HUB_DATASET}/{task.name}"

    def load(t: GlueTask, split: str) -> datasets.Dataset:
        return load_glue_split(t, glue_dir, split) if glue_dir else load_hub_split(t, split)

    if train_split not in task.splits or train_split.startswith("test"):
        valid = [s for s in task.splits if not s.startswith("test")]
        raise DataError(f"--train_split {train_split!r} is not a labelled split of {task.name}; valid: {valid}.")
    if split_dev is not None and not 0.0 < split_dev < 1.0:
        raise DataError(f"--split_dev {split_dev} must be a fraction strictly between 0 and 1, e.g. 0.25.")
    run = RunData(task=task, protocol={"source": source, "train_split": None, "eval_splits": {}, "test_splits": []})
    if glue_dir:
        check_task_folder(task, glue_dir)
    need_train_split = do_train or split_dev is not None
    if need_train_split:
        if glue_dir and resolve_split_file(task, glue_dir, train_split) is None:
            if train_split == "train":
                raise DataError(_missing_train_message(task, glue_dir))
            load(task, train_split)  # raises the "no such file" error
        data = load(task, train_split)
        if "label" not in data.column_names:
            raise DataError(f"The {train_split} split of {task.name} has no labels; it cannot be trained on.")
        if split_dev is not None:
            run.train, run.eval["validation"] = _split_off(data, split_dev, split_seed, f"{task.name} {train_split}")
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
