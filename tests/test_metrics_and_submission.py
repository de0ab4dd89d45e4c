"""Metrics against values computed by hand, and the GLUE-server prediction files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peftlab.glue.metrics import glue_metrics, predictions_from_logits
from peftlab.glue.submission import write_submission
from peftlab.glue.tasks import AX, TASKS, get_task


def test_accuracy_and_f1_by_hand():
    # labels 1 1 0 0 1, predictions 1 0 0 1 1 -> tp=2, fp=1, fn=1: precision=recall=2/3, f1=2/3; accuracy 3/5
    result = glue_metrics(get_task("mrpc"), np.array([1, 0, 0, 1, 1]), np.array([1, 1, 0, 0, 1]))
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["combined_score"] == pytest.approx((0.6 + 2 / 3) / 2)


def test_matthews_correlation_by_hand():
    # tp=2 tn=1 fp=1 fn=0: (2*1 - 1*0) / sqrt(3*2*2*1) = 2/sqrt(12)
    result = glue_metrics(get_task("cola"), np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0]))
    assert result == {"matthews_correlation": pytest.approx(2 / math.sqrt(12))}


def test_pearson_and_spearman_by_hand():
    # x = 1 2 3, y = 1 3 2: pearson = 0.5 (centred dot 1 / (sqrt2*sqrt2)); spearman on ranks = 0.5 too
    result = glue_metrics(get_task("stsb"), np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
    assert result["pearson"] == pytest.approx(0.5)
    assert result["spearmanr"] == pytest.approx(0.5)
    assert result["combined_score"] == pytest.approx(0.5)


def test_every_task_reports_its_glue_metric_names():
    expected = {
        "cola": {"matthews_correlation"}, "sst2": {"accuracy"}, "mrpc": {"f1", "accuracy", "combined_score"},
        "stsb": {"pearson", "spearmanr", "combined_score"}, "qqp": {"f1", "accuracy", "combined_score"},
        "mnli": {"accuracy"}, "qnli": {"accuracy"}, "rte": {"accuracy"}, "wnli": {"accuracy"},
    }  # fmt: skip
    for name, task in TASKS.items():
        values = np.array([0.0, 1.0, 2.0, 1.0]) if task.is_regression else np.array([0, 1, 1, 0])
        assert set(glue_metrics(task, values, values)) == expected[name]


def test_predictions_from_logits():
    assert predictions_from_logits(get_task("rte"), np.array([[0.1, 0.9], [2.0, -1.0]])).tolist() == [1, 0]
    assert predictions_from_logits(get_task("stsb"), np.array([[3.5], [1.0]])).tolist() == [3.5, 1.0]


def test_submission_files_use_server_names_and_formats(tmp_path):
    rte = write_submission(get_task("rte"), "test", [0, 1], np.array([1, 0]), tmp_path)
    assert rte.name == "RTE.tsv"
    assert rte.read_text() == "index\tprediction\n0\tnot_entailment\n1\tentailment\n"
    sts = write_submission(get_task("stsb"), "test", [5, 6, 7], np.array([-0.4, 2.25, 6.0]), tmp_path)
    assert sts.read_text() == "index\tprediction\n5\t0.000\n6\t2.250\n7\t5.000\n"
    cola = write_submission(get_task("cola"), "test", [0], np.array([1]), tmp_path)
    assert cola.read_text() == "index\tprediction\n0\t1\n"
    mnli = write_submission(get_task("mnli"), "test_mismatched", [0], np.array([2]), tmp_path)
    assert mnli.name == "MNLI-mm.tsv" and mnli.read_text().endswith("0\tcontradiction\n")
    assert write_submission(AX, "test", [0], np.array([1]), tmp_path).read_text().endswith("0\tneutral\n")
