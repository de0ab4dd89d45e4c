"""The record of a run beside its results: ``run_config.json`` (what was asked, what the preset filled in, what
was resolved, how the reported model was selected) and the versions of everything that ran."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers

import peftlab
from peftlab.glue.data import RunData
from peftlab.lab.args import GlueTrainingArguments
from peftlab.lab.checks import SHORT_DTYPES
from peftlab.lab.parsing import Plan
from peftlab.lab.workspace import base_model_of
from peftlab.modeling import (
    BUNDLED_MODEL,
    SequenceClassifier,
)

logger = logging.getLogger("peftlab")

RUN_CONFIG_NAME = "run_config.json"
RESULTS_NAME = "all_results.json"


def git_commit() -> str:
    """The repository's commit (with ``+dirty`` for uncommitted changes), or ``unknown`` outside a checkout."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "peftlab": peftlab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "numpy": np.__version__,
    }


def run_config(plan: Plan, run_data: RunData, model: SequenceClassifier) -> dict[str, Any]:
    """Everything that determines the run, to be saved beside its results, and the modules its methods adapted."""
    model_args, _, data_args, training_args = plan.parsed
    return {
        "command": [sys.executable, "run_glue.py", *plan.argv],
        "protocol": {
            "name": plan.protocol_args.protocol,
            "preset": plan.protocol_args.applied,
            "preset_not_applied": plan.protocol_args.not_applied,
            "given": sorted(plan.given),
        },
        "asked": {k: v for k, v in plan.given.items() if k != "token"},  # as given; the *_args below: as resolved
        "model": {"base_model": base_model_of(model_args) or BUNDLED_MODEL, "resolved_path": plan.model_path},
        "task": run_data.task.name,
        "label_names": list(run_data.task.label_names) if run_data.task.label_names else None,
        "data_protocol": run_data.protocol,
        "model_args": {k: v for k, v in asdict(model_args).items() if k != "token"},
        "peft_args": asdict(model.peft_args),
        "targeted_modules": model.injection.targeted_modules,
        "data_args": asdict(data_args),
        "training_args": training_args.to_dict(),
        "model_selection": model_selection(training_args),
        "precision": {
            "training": "fp16 autocast" if training_args.fp16 else "bf16 autocast" if training_args.bf16 else "fp32",
            "frozen_prefix_cache": f"{training_args.cache_dtype} (filled in {SHORT_DTYPES[model_args.model_dtype]})"
            if training_args.cache_frozen_prefix
            else None,
        },
        "frozen_layers_mode": frozen_layers_mode(model),
        "versions": versions(),
        "device": "cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def frozen_layers_mode(model: SequenceClassifier) -> str:
    """How the frozen layers below the trained ones ran, in words."""
    if model.frozen_prefix:
        return f"eval (layers below {model.frozen_prefix} are computed once, without dropout, and cached)"
    return "train (dropout active in frozen layers, as in the paper's code)"


def model_selection(training_args: GlueTrainingArguments) -> str:
    """How the reported model was chosen, in words (also for the tables)."""
    if training_args.select_best_in_memory or training_args.load_best_model_at_end:
        where = "kept in memory" if training_args.select_best_in_memory else "the Trainer's checkpoints"
        sign = "highest" if training_args.greater_is_better else "lowest"
        return f"best evaluation ({sign} eval_{training_args.metric_for_best_model}; {where})"
    return "last step"
