"""The GLUE and user-file loaders, on small files written here in every format the loaders accept."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import write

from peftlab.errors import DataError
from peftlab.glue.data import load_run_data, read_glue_tsv, read_split_file, read_user_file, resolve_split_file
from peftlab.glue.tasks import AX, get_task


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


def test_missing_train_split_points_to_offline_protocols(tmp_path):
    (tmp_path / "QNLI").mkdir()
    with pytest.raises(DataError, match=r"qnli has no train split.*--train_split validation --split_dev 0.25"):
        load_run_data(get_task("qnli"), glue_dir=str(tmp_path), do_train=True, do_eval=True, do_predict=False)


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
    good = write(tmp_path / "t.csv", "text,label\na,x\n")
    other = write(tmp_path / "v.csv", "text,label\nb,y\n")
    with pytest.raises(DataError, match=r"record 1: label 'y' is not one of \['x'\]"):
        load_run_data(
            None, glue_dir=None, train_file=str(good), validation_file=str(other),
            do_train=True, do_eval=True, do_predict=False,
        )  # fmt: skip
