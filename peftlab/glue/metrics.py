"""GLUE metrics computed locally (scikit-learn and scipy), under the names GLUE and HuggingFace use.

``evaluate.load("glue")`` is deliberately not used: it fetches its script from the hub.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef
from transformers import EvalPrediction

from peftlab.glue.tasks import GlueTask


def glue_metrics(task: GlueTask, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of ``task`` for predicted class ids (or scores, for regression) against ``labels``.

    Returns the task's metrics and, where a task has two, their mean as ``combined_score``.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    result: dict[str, float] = {}
    for name in task.metrics:
        if name == "accuracy":
            result[name] = float((predictions == labels).mean())
        elif name == "f1":
            result[name] = float(f1_score(labels, predictions))
        elif name == "matthews_correlation":
            result[name] = float(matthews_corrcoef(labels, predictions))
        elif name == "pearson":
            result[name] = float(pearsonr(predictions, labels)[0])
        elif name == "spearmanr":
            result[name] = float(spearmanr(predictions, labels)[0])
        else:  # pragma: no cover - the task table only names the metrics above
            raise ValueError(f"Unknown metric {name!r}")
    if len(task.metrics) > 1:
        result["combined_score"] = float(np.mean([result[name] for name in task.metrics]))
    return result


def predictions_from_logits(task: GlueTask, logits: np.ndarray) -> np.ndarray:
    """Class ids (argmax) for classification, the squeezed score for regression."""
    logits = np.asarray(logits)
    return np.squeeze(logits, axis=-1) if task.is_regression else np.argmax(logits, axis=-1)


def predictions_of(task: GlueTask, prediction: EvalPrediction) -> np.ndarray:
    """The class ids (or regression scores) of a Trainer evaluation's output (its logits, or their first element)."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return predictions_from_logits(task, logits)


def compute_metrics_fn(task: GlueTask) -> Callable[[EvalPrediction], dict[str, float]]:
    """The ``compute_metrics`` callable for the HF Trainer."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        return glue_metrics(task, predictions_of(task, prediction), prediction.label_ids)

    return compute_metrics
