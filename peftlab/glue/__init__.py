"""GLUE: the task table, data loading, metrics and submission files."""

from __future__ import annotations

from peftlab.errors import DataError
from peftlab.glue.data import RunData, load_run_data
from peftlab.glue.metrics import compute_metrics_fn, glue_metrics
from peftlab.glue.tasks import AX, TASKS, GlueTask, get_task

__all__ = [
    "AX",
    "TASKS",
    "DataError",
    "GlueTask",
    "RunData",
    "compute_metrics_fn",
    "get_task",
    "glue_metrics",
    "load_run_data",
]
