"""Property-based tests of the TSV/CSV/JSON loaders (hypothesis): over random texts (quotes, tabs, commas, line
breaks, any Unicode), labels, encodings and damage, a valid file loads exactly what was written, and an invalid
one is a DataError naming the file and the line, never another exception."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from peftlab.errors import DataError
from peftlab.glue.data import load_run_data, read_glue_tsv
from peftlab.glue.tasks import get_task

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
"""Any text a data file can hold: quotes, commas, tabs, line breaks, U+2028, emoji..."""
names = st.text(st.characters(whitelist_categories=("L",)), min_size=1, max_size=6).filter(
    lambda s: s.strip() == s and s.lower() not in ("nan", "null", "none", "na", "inf", "infinity")
)
"""Class names (letters only: never read as a number or a missing value)."""
label_sets = st.one_of(
    st.lists(names, min_size=2, max_size=4, unique=True),
    st.lists(st.integers(-5, 20), min_size=2, max_size=4, unique=True),
    st.lists(st.integers(-5, 20).map(float), min_size=2, max_size=4, unique=True),  # 0.0, 1.0: classes too
    st.lists(st.floats(-1e6, 1e6).filter(lambda x: x != int(x)), min_size=1, max_size=4, unique=True),  # scores
)


@st.composite
def labelled_rows(draw) -> tuple[list[tuple[str, str, object]], list[object]]:
    classes = draw(label_sets)
    rows = draw(st.lists(st.tuples(texts, texts, st.sampled_from(classes)), min_size=1, max_size=8))
    return rows, classes


def is_regression(labels: list[object]) -> bool:
    return any(isinstance(x, float) and x != int(x) for x in labels)


def expected_labels(labels: list[object]) -> tuple[list[object], tuple[str, ...] | None]:
    """The labels a loader must give back (scores, or class names by id) and the label names (None: regression)."""
    if is_regression(labels):
        return [float(x) for x in labels], None
    as_names = [str(int(x)) if isinstance(x, (int, float)) else x for x in labels]
    return as_names, tuple(sorted(set(as_names), key=lambda n: (float(n), "") if re.fullmatch(r"-?\d+", n) else (0, n)))


def label_text(label: object) -> str:
    return repr(label) if isinstance(label, float) else str(label)


def load(path: Path):
    return load_run_data(None, glue_dir=None, train_file=str(path), do_train=True, do_eval=False, do_predict=False)


def check_loads_exactly(path: Path, rows: list[tuple[str, str, object]]) -> None:
    labels = [label for _, _, label in rows]
    wanted, label_names = expected_labels(labels)
    if label_names is not None and len(label_names) < 2:
        assert_data_error(lambda: load(path), path)  # one class: refused, not a one-output "classifier"
        return
    run = load(path)
    assert run.train["sentence1"] == [a for a, _, _ in rows]
    assert run.train["sentence2"] == [b for _, b, _ in rows]
    assert run.task.label_names == label_names
    got = run.train["label"]
    assert (got if label_names is None else [label_names[i] for i in got]) == wanted


def assert_data_error(call, path: Path, line: int | None = None) -> DataError:
    """``call`` raises a DataError naming ``path`` (and ``line``); any other exception fails the test."""
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert str(path) in message, message
    if line is not None:
        assert re.search(rf"line {line}\b", message), (line, message)
    assert "\n" not in message  # one line: texts in it are quoted with their escapes
    return caught.value


def delimited(rows: list[list[str]], delimiter: str, terminator: str) -> tuple[str, list[int]]:
    """The csv/tsv text of ``rows`` (header first) and the line each row starts on. (With ``\\n`` line ends every
    field is quoted: Python 3.11's writer leaves a lone ``\\r`` unquoted then, which no reader reads back.)"""
    out, starts = io.StringIO(), []
    quoting = csv.QUOTE_MINIMAL if terminator == "\r\n" else csv.QUOTE_ALL
    writer = csv.writer(out, delimiter=delimiter, lineterminator=terminator, quoting=quoting)
    for row in rows:
        starts.append(1 + len(re.findall(r"\r\n|\r|\n", out.getvalue())))
        writer.writerow(row)
    return out.getvalue(), starts


@SETTINGS
@given(
    labelled_rows(), st.sampled_from([(",", ".csv"), ("\t", ".tsv")]), st.sampled_from(["\r\n", "\n"]), st.booleans()
)
def test_csv_and_tsv_files_load_exactly_what_was_written(data, kind, terminator, bom):
    rows, _ = data
    delimiter, suffix = kind
    text, _ = delimited(
        [["sentence1", "sentence2", "label"], *([a, b, label_text(c)] for a, b, c in rows)], delimiter, terminator
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"train{suffix}"
        path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8"))
        check_loads_exactly(path, rows)


@SETTINGS
@given(labelled_rows(), st.booleans(), st.sampled_from([None, 1, "\t"]), st.booleans())
def test_json_and_jsonl_files_load_exactly_what_was_written(data, lines, indent, ascii_only):
    rows, _ = data
    records = [{"sentence1": a, "sentence2": b, "label": label} for a, b, label in rows]
    if lines:
        text = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records)
    else:
        text = json.dumps(records, indent=indent, ensure_ascii=ascii_only)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("train.jsonl" if lines else "train.json")
        path.write_text(text, encoding="utf-8")
        check_loads_exactly(path, rows)


glue_texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\t\r\n"), max_size=12)


@SETTINGS
@given(st.lists(st.tuples(glue_texts, glue_texts, st.sampled_from(["entailment", "not_entailment"])), min_size=1, max_size=8), st.booleans())  # fmt: skip
def test_glue_tsv_files_load_exactly_what_was_written(rows, bom):
    text = "index\tsentence1\tsentence2\tlabel\n" + "".join(f"{i}\t{a}\t{b}\t{c}\n" for i, (a, b, c) in enumerate(rows))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dev.tsv"
        path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8"))
        data = read_glue_tsv(get_task("rte"), path)
    assert data["sentence1"] == [a for a, _, _ in rows] and data["sentence2"] == [b for _, b, _ in rows]
    assert data["label"] == [("entailment", "not_entailment").index(c) for _, _, c in rows]
    assert data["idx"] == list(range(len(rows)))


DAMAGE = ["bad byte", "extra field", "missing field", "empty label", "name among numbers"]


@SETTINGS
@given(labelled_rows(), st.sampled_from([(",", ".csv"), ("\t", ".tsv"), ("\t", "glue")]), st.sampled_from(DAMAGE), st.data())  # fmt: skip
def test_damaged_delimited_files_are_a_data_error_naming_file_and_line(data, kind, damage, draw):
    rows, classes = data
    delimiter, suffix = kind
    if suffix == "glue":  # RTE's layout: no quoting, so no tab or line break inside a text
        rows = [(re.sub(r"[\t\r\n]", " ", a), re.sub(r"[\t\r\n]", " ", b), c) for a, b, c in rows]
        classes = ["entailment", "not_entailment"]
        rows = [(a, b, classes[i % 2]) for i, (a, b, _) in enumerate(rows)]
        assume(damage != "name among numbers")
    if damage == "name among numbers":
        assume(len(rows) > 1 and all(isinstance(c, (int, float)) for c in classes))
    table = [["sentence1", "sentence2", "label"], *([a, b, label_text(c)] for a, b, c in rows)]
    row = draw.draw(st.integers(1, len(rows)), label="damaged row")
    if damage == "extra field":
        table[row] = [*table[row][:2], draw.draw(texts, label="extra"), table[row][2]]
    elif damage == "missing field":
        table[row] = table[row][1:]
    elif damage == "empty label":
        table[row][2] = draw.draw(st.sampled_from(["", " ", "NaN", "null"]), label="empty")
    elif damage == "name among numbers":
        table[row][2] = "pos"
    if suffix == "glue":
        text = "".join("\t".join(r) + "\n" for r in table)
        starts = list(range(1, len(table) + 1))
    else:
        text, starts = delimited(table, delimiter, "\n")
    raw = text.encode("utf-8")
    if damage == "bad byte":  # a byte that is never UTF-8, at the start of the damaged row
        offset = len(text[: [m.end() for m in re.finditer(r"\r\n|\r|\n", text)][starts[row] - 2]].encode("utf-8"))
        raw = raw[:offset] + draw.draw(st.sampled_from([b"\xff", b"\xc3(", b"\x80", b"\xed\xa0\x80"])) + raw[offset:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("dev.tsv" if suffix == "glue" else f"train{suffix}")
        path.write_bytes(raw)
        call = (lambda: read_glue_tsv(get_task("rte"), path)) if suffix == "glue" else (lambda: load(path))
        if damage == "name among numbers":
            error = assert_data_error(call, path)
            assert "labels mix numbers and names" in str(error) and f"'pos' on line {starts[row]}" in str(error)
        else:
            assert_data_error(call, path, starts[row])


@SETTINGS
@given(labelled_rows(), st.sampled_from(["truncated line", "null label", "not an object", "bad byte"]), st.data())
def test_damaged_jsonl_files_are_a_data_error_naming_file_and_line(data, damage, draw):
    rows, _ = data
    lines = [json.dumps({"sentence1": a, "sentence2": b, "label": c}, ensure_ascii=False) for a, b, c in rows]
    row = draw.draw(st.integers(0, len(lines) - 1), label="damaged row")
    if damage == "truncated line":
        lines[row] = lines[row][:-1]
    elif damage == "null label":
        lines[row] = json.dumps({"sentence1": "a", "sentence2": "b", "label": None})
    elif damage == "not an object":
        lines[row] = json.dumps([1, 2])
    raw = [line.encode("utf-8") for line in lines]
    if damage == "bad byte":
        raw[row] = b"\xff" + raw[row]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.jsonl"
        path.write_bytes(b"\n".join(raw) + b"\n")
        assert_data_error(lambda: load(path), path, row + 1)


@SETTINGS
@given(labelled_rows(), st.sampled_from(["utf-16", "utf-32", "utf-16-le"]))
def test_files_in_another_encoding_are_a_data_error_on_line_one(data, encoding):
    rows, _ = data
    text, _ = delimited([["sentence1", "sentence2", "label"], *([a, b, label_text(c)] for a, b, c in rows)], ",", "\n")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.csv"
        path.write_bytes(text.encode(encoding))
        assert_data_error(lambda: load(path), path, 1)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["train.csv", "train.tsv", "train.json", "train.jsonl", "glue"]))
def test_any_bytes_either_load_or_are_a_data_error_naming_the_file(raw, kind):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("dev.tsv" if kind == "glue" else kind)
        path.write_bytes(raw)
        try:
            read_glue_tsv(get_task("rte"), path) if kind == "glue" else load(path)
        except DataError as err:
            assert str(path) in str(err)


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | texts | st.just("\ud800"),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["text", "label", "x"]), inner),
        max_leaves=8,
    )
)
def test_any_json_value_either_loads_or_is_a_data_error_naming_the_file(value):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.json"
        path.write_text(json.dumps(value), encoding="utf-8")
        try:
            load(path)
        except DataError as err:
            assert str(path) in str(err)
