"""The GLUE and user-file loaders, on small files written here in every format the loaders accept."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import write

from peftlab.errors import DataError
from peftlab.glue.data import load_run_data, read_glue_tsv, read_split_file, resolve_split_file
from peftlab.glue.tasks import AX, get_task
from peftlab.glue.userfiles import read_user_file


def test_headerless_cola_tsv_takes_label_from_column_two(tmp_path):
    path = write(
        tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.\n"
    )
    data = read_glue_tsv(get_task("cola"), path)
    assert data["sentence"] == ["Our friends won't buy this.", "They drank the pub."]
    assert data["label"] == [1, 0]
    assert data["idx"] == [0, 1]


def test_tsv_keeps_stray_quotes_verbatim(tmp_path):
    text = 'index\tsentence1\tsentence2\tlabel\n0\tHe said "hi.\t" Quoted\tentailment\n1\tx\ty"\tnot_entailment\n'
    data = read_glue_tsv(get_task("rte"), write(tmp_path / "dev.tsv", text))
    assert data["sentence1"] == ['He said "hi.', "x"]
    assert data["sentence2"] == ['" Quoted', 'y"']
    assert data["label"] == [0, 1]  # entailment=0, not_entailment=1 as in HuggingFace


def test_mrpc_original_format_with_bom_header(tmp_path):
    text = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t11\t12\tA b .\tA c .\n0\t13\t14\tD .\tE .\n"
    data = read_glue_tsv(get_task("mrpc"), write(tmp_path / "train.tsv", text, bom=True))
    assert data.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert data["label"] == [1, 0]
    assert data["sentence1"] == ["A b .", "D ."]


def test_stsb_scores_are_floats_and_test_file_is_unlabelled(tmp_path):
    cols = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    dev = write(tmp_path / "dev.tsv", f"{cols}\tscore\n0\tg\tf\ty\t0\tn\tn\tA.\tB.\t3.800\n")
    test = write(tmp_path / "test.tsv", f"{cols}\n7\tg\tf\ty\t0\tn\tn\tA.\tB.\n")
    assert read_glue_tsv(get_task("stsb"), dev)["label"] == [3.8]
    unlabelled = read_glue_tsv(get_task("stsb"), test)
    assert "label" not in unlabelled.column_names and unlabelled["idx"] == [7]


def test_mnli_tsv_maps_gold_label_names_to_hf_ids(tmp_path):
    head = "index\tpromptID\tpairID\tgenre\tb1\tb2\tp1\tp2\tsentence1\tsentence2\tlabel1\tgold_label\n"
    rows = "0\t1\t1\tg\t.\t.\t.\t.\tP.\tH.\tneutral\tneutral\n1\t1\t1\tg\t.\t.\t.\t.\tP.\tH.\tx\tcontradiction\n"
    write(tmp_path / "MNLI" / "dev_matched.tsv", head + rows)
    path = resolve_split_file(get_task("mnli"), tmp_path, "validation_matched")
    data = read_split_file(get_task("mnli"), path)
    assert data.column_names == ["premise", "hypothesis", "label", "idx"]
    assert data["label"] == [1, 2]


def test_parquet_layout_is_found_and_minus_one_labels_mean_unlabelled(tmp_path):
    folder = tmp_path / "QQP"
    folder.mkdir()
    frame = pd.DataFrame({"question1": ["a?", "b?"], "question2": ["c?", "d?"], "label": [1, 0], "idx": [0, 1]})
    frame.to_parquet(folder / "validation-00000-of-00001.parquet")
    frame.assign(label=-1).to_parquet(folder / "test-00000-of-00001.parquet")
    task = get_task("qqp")
    assert read_split_file(task, resolve_split_file(task, tmp_path, "validation"))["label"] == [1, 0]
    assert "label" not in read_split_file(task, resolve_split_file(task, tmp_path, "test")).column_names
    assert resolve_split_file(task, tmp_path, "train") is None


def test_tsv_is_preferred_over_parquet_for_the_same_split(tmp_path):
    write(tmp_path / "MRPC" / "train.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n")
    pd.DataFrame({"sentence1": ["x"], "sentence2": ["y"], "label": [0], "idx": [0]}).to_parquet(
        tmp_path / "MRPC" / "train-00000-of-00001.parquet"
    )
    assert resolve_split_file(get_task("mrpc"), tmp_path, "train").name == "train.tsv"


def test_malformed_row_names_file_and_line(tmp_path):
    path = write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly one field\n")
    with pytest.raises(DataError, match=r"dev.tsv, line 3: 2 tab-separated fields, expected 4"):
        read_glue_tsv(get_task("rte"), path)


def test_label_outside_label_set_is_refused_with_valid_labels(tmp_path):
    path = write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n")
    with pytest.raises(
        DataError, match=r"line 2: label 'contradiction' is not one of \['entailment', 'not_entailment'\]"
    ):
        read_glue_tsv(get_task("rte"), path)
    sst = write(tmp_path / "sst.tsv", "sentence\tlabel\ngood\t2\n")
    with pytest.raises(DataError, match=r"label '2' is not one of \['0', '1'\]"):
        read_glue_tsv(get_task("sst2"), sst)
    sts = write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t7.5\n")
    with pytest.raises(DataError, match=r"outside \[0, 5\]"):
        read_glue_tsv(get_task("stsb"), sts)


def test_wrong_columns_are_named(tmp_path):
    path = write(tmp_path / "dev.tsv", "index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['sentence1', 'sentence2'\]"):
        read_glue_tsv(get_task("rte"), path)


def test_missing_train_split_suggests_only_fixes_that_work(tmp_path):
    """Each fix the message offers is taken as written, and it loads."""
    write(tmp_path / "QNLI" / "dev.tsv", "index\tquestion\tsentence\tlabel\n" + "".join(
        f"{i}\tq{i}?\ts{i}.\t{'entailment' if i % 2 else 'not_entailment'}\n" for i in range(8)
    ))  # fmt: skip
    write(tmp_path / "SOURCES.md", "where the files come from\n")
    kwargs = dict(glue_dir=str(tmp_path), do_train=True, do_eval=True, do_predict=False)
    with pytest.raises(DataError, match=r"qnli has no train split") as caught:
        load_run_data(get_task("qnli"), **kwargs)
    message = str(caught.value)
    assert f"at {tmp_path / 'QNLI' / 'train.tsv'} ({tmp_path / 'SOURCES.md'} says" in message
    assert "hub" not in message  # the tests run offline (conftest): the hub is no fix here
    split, fraction = re.search(r"--train_split (\S+) --split_dev ([\d.]+)", message).groups()
    run = load_run_data(get_task("qnli"), train_split=split, split_dev=float(fraction), **kwargs)
    assert len(run.train) == 6 and len(run.eval["validation"]) == 2
    # Without a labelled split in the folder, no --train_split is offered (it would fail too).
    (tmp_path / "QNLI" / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"qnli has no train split") as caught:
        load_run_data(get_task("qnli"), **kwargs)
    assert "--train_split" not in str(caught.value)


def test_glue_dir_without_the_task_folder_says_which_folder_to_add_or_point_at(rte_dir, tmp_path):
    """The suggested fix is taken as written, and it loads."""
    kwargs = dict(do_train=True, do_eval=True, do_predict=False)
    # --glue_dir is the task folder itself: the folder above it is suggested.
    with pytest.raises(DataError, match=r"has no RTE folder for rte.*Fix: --glue_dir (\S+) ") as caught:
        load_run_data(get_task("rte"), glue_dir=str(rte_dir / "RTE"), **kwargs)
    suggested = re.search(r"Fix: --glue_dir (\S+) ", str(caught.value)).group(1)
    assert len(load_run_data(get_task("rte"), glue_dir=suggested, **kwargs).train) == 16
    # The task folder spelt otherwise: rename it (folder names are case-sensitive).
    (rte_dir / "RTE").rename(rte_dir / "rte")
    with pytest.raises(DataError, match=r"rename (\S+) to (\S+) \(folder names are case-sensitive\)") as caught:
        load_run_data(get_task("rte"), glue_dir=str(rte_dir), **kwargs)
    source, target = re.search(r"rename (\S+) to (\S+) ", str(caught.value)).groups()
    Path(source).rename(target)
    assert len(load_run_data(get_task("rte"), glue_dir=str(rte_dir), **kwargs).train) == 16
    # No folder at all: where to put which files.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"Fix: put the rte files in (\S+)/ \(train.tsv, ") as caught:
        load_run_data(get_task("rte"), glue_dir=str(empty), **kwargs)
    folder = Path(re.search(r"put the rte files in (\S+)/ ", str(caught.value)).group(1))
    shutil.copytree(rte_dir / "RTE", folder)
    assert len(load_run_data(get_task("rte"), glue_dir=str(empty), **kwargs).train) == 16


def test_missing_eval_split_names_the_files_looked_for(tmp_path):
    (tmp_path / "RTE").mkdir()
    with pytest.raises(DataError, match=r"No validation split for rte: none of .*dev.tsv"):
        load_run_data(get_task("rte"), glue_dir=str(tmp_path), do_train=False, do_eval=True, do_predict=False)


def test_split_dev_is_a_seeded_disjoint_cut_and_recorded(rte_dir):
    kwargs = dict(glue_dir=str(rte_dir), do_train=True, do_eval=True, do_predict=False, split_dev=0.25)
    first = load_run_data(get_task("rte"), **kwargs)
    again = load_run_data(get_task("rte"), **kwargs)
    assert len(first.train) == 12 and len(first.eval["validation"]) == 4
    assert first.eval["validation"]["idx"] == again.eval["validation"]["idx"]
    assert not set(first.train["idx"]) & set(first.eval["validation"]["idx"])
    assert "held-out 0.25 of train (seed 42)" in first.protocol["eval_splits"]["validation"]


def test_training_on_mnli_mismatched_evaluates_on_matched_only(tmp_path):
    folder = tmp_path / "MNLI"
    folder.mkdir()
    frame = pd.DataFrame({"premise": ["p"] * 3, "hypothesis": ["h"] * 3, "label": [0, 1, 2], "idx": [0, 1, 2]})
    frame.to_parquet(folder / "validation_matched-00000-of-00001.parquet")
    frame.to_parquet(folder / "validation_mismatched-00000-of-00001.parquet")
    run = load_run_data(
        get_task("mnli"), glue_dir=str(tmp_path), do_train=True, do_eval=True, do_predict=False,
        train_split="validation_mismatched",
    )  # fmt: skip
    assert list(run.eval) == ["validation_matched"]
    assert run.protocol["train_split"] == "validation_mismatched"
    assert "validation_mismatched" in run.protocol["not_evaluated"]


def test_mnli_predict_includes_ax_diagnostic(tmp_path):
    folder = tmp_path / "MNLI"
    folder.mkdir()
    frame = pd.DataFrame({"premise": ["p"], "hypothesis": ["h"], "label": [-1], "idx": [0]})
    frame.to_parquet(folder / "test_matched-00000-of-00001.parquet")
    frame.to_parquet(folder / "test_mismatched-00000-of-00001.parquet")
    write(tmp_path / "diagnostic" / "diagnostic.tsv", "index\tsentence1\tsentence2\n0\tA.\tB.")
    run = load_run_data(get_task("mnli"), glue_dir=str(tmp_path), do_train=False, do_eval=False, do_predict=True)
    assert list(run.test) == ["test_matched", "test_mismatched", "ax"]
    assert run.test["ax"][0] is AX


def test_user_csv_with_string_labels_and_json_regression(tmp_path):
    csv_path = write(tmp_path / "train.csv", 'text,label\n"good, really",pos\nbad,neg\nfine,pos\n')
    run = load_run_data(
        None, glue_dir=None, train_file=str(csv_path), validation_file=str(csv_path),
        do_train=True, do_eval=True, do_predict=False,
    )  # fmt: skip
    assert run.task.label_names == ("neg", "pos")
    assert run.train["text"][0] == "good, really" and run.train["label"] == [1, 0, 1]
    jsonl = write(
        tmp_path / "train.jsonl",
        '{"sentence1": "a", "sentence2": "b", "label": 0.5}\n{"sentence1": "c", "sentence2": "d", "label": 4.0}\n',
    )
    run = load_run_data(None, glue_dir=None, train_file=str(jsonl), do_train=True, do_eval=False, do_predict=False)
    assert run.task.is_regression and run.task.text_fields == ("sentence1", "sentence2")


def test_user_file_errors_name_file_and_line(tmp_path):
    bad = write(tmp_path / "train.tsv", "sentence\tlabel\na\t1\nb\n")
    with pytest.raises(DataError, match=r"train.tsv, line 3: 1 fields, expected 2"):
        read_user_file(bad)
    with pytest.raises(DataError, match=r"unsupported file type '.xlsx'"):
        read_user_file(tmp_path / "train.xlsx")
    good = write(tmp_path / "t.csv", "text,label\na,x\nb,z\n")
    other = write(tmp_path / "v.csv", "text,label\nb,y\n")
    with pytest.raises(DataError, match=r"v.csv, line 2: label 'y' is not one of \['x', 'z'\]"):
        load_run_data(
            None, glue_dir=None, train_file=str(good), validation_file=str(other),
            do_train=True, do_eval=True, do_predict=False,
        )  # fmt: skip


def user_run(path: Path, label_type: str = "auto"):
    return load_run_data(
        None, glue_dir=None, train_file=str(path), do_train=True, do_eval=False, do_predict=False, label_type=label_type
    )


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("empty.csv", "text,label\na,pos\nb,\nc,neg\n", r"empty.csv, line 3: the label is missing \(''\)"),
        ("blank.tsv", "text\tlabel\na\t1\nb\t  \n", r"blank.tsv, line 3: the label is missing"),
        ("nan.csv", "text,label\na,1.5\nb,NaN\n", r"nan.csv, line 3: the label is missing \('NaN'\)"),
        ("null.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": null}\n', r"null.jsonl, line 3: the label is missing \(null\)"),
        ("absent.json", '[{"text": "a", "label": "x"},\n {"text": "b"}]', r"absent.json, line 2: the label is missing \(null\)"),
        ("list.json", '[{"text": "a", "label": ["x"]}]', r"list.json, line 1: the label is a JSON list"),
        ("mixed.csv", "text,label\na,1\nb,pos\nc,0\n", r"mixed.csv: labels mix numbers and names \('1' on line 2, 'pos' on line 3\)"),
        ("one.csv", "text,label\na,pos\nb,pos\n", r"one.csv: every label is 'pos'; classification needs at least two classes"),
        ("inf.csv", "text,label\na,0.5\nb,inf\n", r"inf.csv, line 3: label inf is not a finite number"),
        ("index.csv", ",text,label\n0,a,x\n1,b,y\n", r"index.csv, line 1: column 1 of the header has no name.*index=False"),
        ("twice.csv", "text,text,label\na,b,x\n", r"twice.csv, line 1: column 'text' appears twice"),
        ("quote.csv", 'text,label\n"a,x\nb,y\n', r"quote.csv, line 2: malformed row"),
        ("header.csv", "text,label\n", r"header.csv has no rows"),
        ("bad.json", '[{"text": "a", "label": "x"},\n {"text": "b" "label": "y"}]', r"bad.json, line 2: not valid JSON"),
    ],
)  # fmt: skip
def test_user_label_and_row_errors_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        user_run(write(tmp_path / name, text))


def test_user_labels_written_as_whole_floats_are_classes_and_the_log_says_how_to_get_regression(tmp_path, caplog):
    path = write(tmp_path / "d.csv", "text,label\na,0.0\nb,1.0\nc,1\nd,0\n")
    with caplog.at_level("WARNING"):
        run = user_run(path)
    assert not run.task.is_regression and run.task.label_names == ("0", "1")
    assert run.train["label"] == [0, 1, 1, 0]
    assert "'0.0' on line 2" in caplog.text and "--label_type regression" in caplog.text
    forced = user_run(path, "regression")
    assert forced.task.is_regression and forced.train["label"] == [0.0, 1.0, 1.0, 0.0]
    assert forced.protocol["label_type"] == "regression"


def test_user_regression_takes_any_finite_score_and_classification_can_be_forced(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": -3.5}\n{"text": "b", "label": 120.25}\n')
    run = user_run(path)
    assert run.task.is_regression and run.train["label"] == [-3.5, 120.25]  # STS-B's [0, 5] is STS-B's rule only
    with pytest.raises(DataError, match=r"d.jsonl, line 1: label -3.5 is not a whole number, so it is no class id"):
        user_run(path, "classification")
    names = write(tmp_path / "n.csv", "text,label\na,pos\nb,neg\n")
    with pytest.raises(DataError, match=r"n.csv, line 2: label 'pos' is not a number"):
        user_run(names, "regression")
    ids = write(tmp_path / "i.csv", "text,label\na,2\nb,10\nc,2.0\n")
    assert user_run(ids, "classification").task.label_names == ("2", "10")  # numeric order, 2.0 is class 2


def test_user_test_file_without_labels_and_validation_file_must_have_them(tmp_path):
    train = write(tmp_path / "t.csv", "text,label\na,x\nb,y\n")
    test = write(tmp_path / "p.csv", "text,label\nc,\nd,\n")
    run = load_run_data(
        None, glue_dir=None, train_file=str(train), test_file=str(test), do_train=True, do_eval=False,
        do_predict=True,
    )  # fmt: skip
    assert "label" not in run.test["test"][1].column_names
    with pytest.raises(DataError, match=r"p.csv, line 2: the label is missing"):
        load_run_data(
            None, glue_dir=None, train_file=str(train), validation_file=str(test), do_train=True, do_eval=True,
            do_predict=False,
        )  # fmt: skip


def test_split_dev_that_leaves_nothing_to_train_or_evaluate_is_refused(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\na,x\nb,y\n")
    with pytest.raises(DataError, match=r"--split_dev 0.9 of the 2 examples of .*t.csv leaves no example"):
        load_run_data(
            None, glue_dir=None, train_file=str(path), do_train=True, do_eval=True, do_predict=False, split_dev=0.9
        )


def test_glue_row_with_an_extra_tab_is_refused_not_cut_short(tmp_path):
    text = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tpart\tentailment\n"
    with pytest.raises(DataError, match=r"dev.tsv, line 3: 5 tab-separated fields, expected 4 .*a text holding a tab"):
        read_glue_tsv(get_task("rte"), write(tmp_path / "dev.tsv", text))


def test_header_only_glue_files_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"dev.tsv has a header line and no rows: it holds no rte examples"):
        read_glue_tsv(get_task("rte"), write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n"))
    path = tmp_path / "validation-00000-of-00001.parquet"
    pd.DataFrame({"sentence1": pd.Series([], dtype=str), "sentence2": pd.Series([], dtype=str)}).to_parquet(path)
    with pytest.raises(DataError, match=r"validation-00000-of-00001.parquet has no rows"):
        read_split_file(get_task("rte"), path)


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tcaf\xe9\tb\tentailment\n".encode("latin-1"), r"dev.tsv, line 2: byte 0xe9 is not UTF-8"),
        ("dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n".encode("utf-16"), r"dev.tsv, line 1: the file is UTF-16 \(it starts with a UTF-16 byte-order mark\); save it as UTF-8"),
        ("dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n".encode("utf-16-le"), r"dev.tsv, line 1: a NUL byte"),
        ("d.csv", b"text,label\r\na,x\r\nb\x92,y\r\n", r"d.csv, line 3: byte 0x92 is not UTF-8"),
        ("d.jsonl", b'{"text": "a", "label": "x"}\n{"text": "\xff", "label": "y"}\n', r"d.jsonl, line 2: byte 0xff is not UTF-8"),
    ],
)  # fmt: skip
def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError, match=message):
        read_glue_tsv(get_task("rte"), path) if name.endswith(".tsv") else read_user_file(path)
