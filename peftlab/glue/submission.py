"""Prediction files in the format the GLUE evaluation server accepts (``index<TAB>prediction``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from peftlab.glue.tasks import GlueTask
from peftlab.io import atomic_write_text


def format_predictions(task: GlueTask, predictions: np.ndarray) -> list[str]:
    """Render predictions as the server wants them: names, ids, or STS-B scores clipped to [0, 5]."""
    if task.is_regression:
        return [f"{value:.3f}" for value in np.clip(predictions, 0.0, 5.0)]
    assert task.label_names is not None
    if task.submit_label_names:
        return [task.label_names[int(i)] for i in predictions]
    return [str(int(i)) for i in predictions]


def write_submission(
    task: GlueTask, split: str, indices: Sequence[int], predictions: np.ndarray, output_dir: str | os.PathLike
) -> Path:
    """Write ``<output_dir>/<GLUE name>.tsv`` for ``split`` of ``task`` and return its path."""
    path = Path(output_dir) / task.submission_files[split]
    lines = ["index\tprediction"]
    lines += [f"{index}\t{value}" for index, value in zip(indices, format_predictions(task, predictions))]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
