"""The names figures show: the paper's name of every sweep variant, metric, task and axis, in one table.

A name the table does not hold is shown with its underscores as spaces (a new variant still gets a readable, if
plain, label); add it here to give it its paper name.
"""

from __future__ import annotations

LABELS: dict[str, dict[str, str]] = {
    "variant": {
        "raw": "probe",
        "raw_cls": "probe (CLS)",
        "raw_mean": "probe (mean)",
        "adapter": "adapter",
        "parallel_adapter": "parallel adapter",
        "parallel_adapter_bn": "parallel adapter",
        "adapter_ffn": "FFN adapter",
        "adapter_attn": "attention adapter",
        "adapter_1_layer": "adapter, 1 layer",
        "adapter_2_layers": "adapter, 2 layers",
        "adapter_plus_lora": "adapter + LoRA",
        "adapter_auto": "adapter, automatic layer",
        "adapter_auto_warm": "adapter, automatic layer (warm head)",
        "adapter_auto_warm_proxy": "adapter, automatic layer (proxy, warm head)",
        "ffn_finetune": "FFN fine-tuning",
        "finetune": "full fine-tuning",
        "lora": "LoRA",
        "lora_all": "LoRA, every layer",
        "lora_auto": "LoRA, automatic layer",
        "lora_auto_warm": "LoRA, automatic layer (warm head)",
        "lora_auto_warm_proxy": "LoRA, automatic layer (proxy, warm head)",
        "bitfit": "BitFit",
        "prefix": "prefix",
    },
    # a task's main metric; "TASK:combined_score" where the combined score is a task's mean of two metrics
    "metric": {
        "accuracy": "accuracy",
        "f1": "F1",
        "matthews_correlation": "Matthews correlation",
        "pearson": "Pearson correlation",
        "spearmanr": "Spearman correlation",
        "combined_score": "mean of the task's metrics",
        "mrpc:combined_score": "F1/accuracy mean",
        "qqp:combined_score": "F1/accuracy mean",
        "stsb:combined_score": "Pearson/Spearman mean",
    },
    "task": {
        "cola": "CoLA",
        "sst2": "SST-2",
        "mrpc": "MRPC",
        "stsb": "STS-B",
        "qqp": "QQP",
        "mnli": "MNLI",
        "qnli": "QNLI",
        "rte": "RTE",
        "wnli": "WNLI",
        "ax": "AX",
    },
    "axis": {"layer": "layer", "bottleneck_dim": "bottleneck dimension"},
}
"""Kind (variant, metric, task, axis) -> internal name -> the name a figure shows."""


def label(kind: str, name: str) -> str:
    """The name figures show for ``name`` of ``kind`` (a key of :data:`LABELS`)."""
    return LABELS[kind].get(name, str(name).replace("_", " "))


def variant_label(variant: str) -> str:
    return label("variant", variant)


def metric_label(metric: str, task: str | None = None) -> str:
    """The metric's name, the task's own where it has one (MRPC's combined score is the F1/accuracy mean)."""
    return LABELS["metric"].get(f"{task}:{metric}") or label("metric", metric)


def task_label(task: str) -> str:
    return label("task", task)


def axis_label(axis: str) -> str:
    return label("axis", axis)
