"""The nine GLUE tasks (plus the AX diagnostic set) as one table.

Every per-task fact the loaders, metrics and prediction writers need lives here: the text fields (named as in
the HuggingFace ``nyu-mll/glue`` dataset, which the parquet files and the hub use), where those fields sit in the
original GLUE TSV files, the label names in HuggingFace's id order, the metrics, and the GLUE-server file names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftlab.errors import ConfigError


@dataclass(frozen=True)
class GlueTask:
    """Static description of one GLUE task."""

    name: str
    """Lower-case task name as used on the command line and by HuggingFace (``rte``, ``sst2``...)."""
    dirname: str
    """Folder of the task in the GLUE data layout (``RTE``, ``SST-2``...)."""
    text_fields: tuple[str, ...]
    """The one or two text columns, named as in the HuggingFace dataset."""
    tsv_text_columns: tuple[str, ...]
    """Header names of the text columns in the GLUE TSV files (same order as ``text_fields``)."""
    tsv_label_column: str | None
    """Header name of the label column in labelled GLUE TSV files."""
    label_names: tuple[str, ...] | None
    """Label names in HuggingFace id order; ``None`` for the regression task STS-B."""
    metrics: tuple[str, ...]
    """Metric names, main metric first."""
    tsv_labels_are_names: bool = False
    """True where the TSV writes label names (``entailment``); otherwise it writes the numeric id."""
    headerless_tsv_columns: tuple[str, ...] | None = None
    """Column names for TSV files without a header line (CoLA's train and dev files)."""
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Split name -> candidate file names inside ``dirname``, TSV first, then HuggingFace parquet globs."""
    eval_splits: tuple[str, ...] = ("validation",)
    """Labelled splits evaluated by default."""
    test_splits: tuple[str, ...] = ("test",)
    """Unlabelled splits predicted by ``--do_predict``."""
    submission_files: dict[str, str] = field(default_factory=dict)
    """Split name -> file name expected by the GLUE evaluation server."""
    submit_label_names: bool = False
    """True where the GLUE server wants label names rather than ids in prediction files."""

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def main_metric(self) -> str:
        return "combined_score" if len(self.metrics) > 1 else self.metrics[0]


def _standard_splits(*, train_tsv: str = "train.tsv") -> dict[str, tuple[str, ...]]:
    return {
        "train": (train_tsv, "train-*.parquet"),
        "validation": ("dev.tsv", "validation-*.parquet"),
        "test": ("test.tsv", "test-*.parquet"),
    }


_PAIR = ("sentence1", "sentence2")

TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            name="cola",
            dirname="CoLA",
            text_fields=("sentence",),
            tsv_text_columns=("sentence",),
            tsv_label_column="label",
            label_names=("unacceptable", "acceptable"),
            metrics=("matthews_correlation",),
            headerless_tsv_columns=("source", "label", "original_label", "sentence"),
            splits=_standard_splits(),
            submission_files={"test": "CoLA.tsv"},
        ),
        GlueTask(
            name="sst2",
            dirname="SST-2",
            text_fields=("sentence",),
            tsv_text_columns=("sentence",),
            tsv_label_column="label",
            label_names=("negative", "positive"),
            metrics=("accuracy",),
            splits=_standard_splits(),
            submission_files={"test": "SST-2.tsv"},
        ),
        GlueTask(
            name="mrpc",
            dirname="MRPC",
            text_fields=_PAIR,
            tsv_text_columns=("#1 String", "#2 String"),
            tsv_label_column="Quality",
            label_names=("not_equivalent", "equivalent"),
            metrics=("f1", "accuracy"),
            splits=_standard_splits(),
            submission_files={"test": "MRPC.tsv"},
        ),
        GlueTask(
            name="stsb",
            dirname="STS-B",
            text_fields=_PAIR,
            tsv_text_columns=_PAIR,
            tsv_label_column="score",
            label_names=None,
            metrics=("pearson", "spearmanr"),
            splits=_standard_splits(),
            submission_files={"test": "STS-B.tsv"},
        ),
        GlueTask(
            name="qqp",
            dirname="QQP",
            text_fields=("question1", "question2"),
            tsv_text_columns=("question1", "question2"),
            tsv_label_column="is_duplicate",
            label_names=("not_duplicate", "duplicate"),
            metrics=("f1", "accuracy"),
            splits=_standard_splits(),
            submission_files={"test": "QQP.tsv"},
        ),
        GlueTask(
            name="mnli",
            dirname="MNLI",
            text_fields=("premise", "hypothesis"),
            tsv_text_columns=_PAIR,
            tsv_label_column="gold_label",
            label_names=("entailment", "neutral", "contradiction"),
            metrics=("accuracy",),
            tsv_labels_are_names=True,
            splits={
                "train": ("train.tsv", "train-*.parquet"),
                "validation_matched": ("dev_matched.tsv", "validation_matched-*.parquet"),
                "validation_mismatched": ("dev_mismatched.tsv", "validation_mismatched-*.parquet"),
                "test_matched": ("test_matched.tsv", "test_matched-*.parquet"),
                "test_mismatched": ("test_mismatched.tsv", "test_mismatched-*.parquet"),
            },
            eval_splits=("validation_matched", "validation_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            submission_files={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
            submit_label_names=True,
        ),
        GlueTask(
            name="qnli",
            dirname="QNLI",
            text_fields=("question", "sentence"),
            tsv_text_columns=("question", "sentence"),
            tsv_label_column="label",
            label_names=("entailment", "not_entailment"),
            metrics=("accuracy",),
            tsv_labels_are_names=True,
            splits=_standard_splits(),
            submission_files={"test": "QNLI.tsv"},
            submit_label_names=True,
        ),
        GlueTask(
            name="rte",
            dirname="RTE",
            text_fields=_PAIR,
            tsv_text_columns=_PAIR,
            tsv_label_column="label",
            label_names=("entailment", "not_entailment"),
            metrics=("accuracy",),
            tsv_labels_are_names=True,
            splits=_standard_splits(),
            submission_files={"test": "RTE.tsv"},
            submit_label_names=True,
        ),
        GlueTask(
            name="wnli",
            dirname="WNLI",
            text_fields=_PAIR,
            tsv_text_columns=_PAIR,
            tsv_label_column="label",
            label_names=("not_entailment", "entailment"),
            metrics=("accuracy",),
            splits=_standard_splits(),
            submission_files={"test": "WNLI.tsv"},
        ),
    )
}

# The AX diagnostic set is predicted with an MNLI model and submitted as AX.tsv; it is not a training task.
AX = GlueTask(
    name="ax",
    dirname="diagnostic",
    text_fields=("premise", "hypothesis"),
    tsv_text_columns=_PAIR,
    tsv_label_column=None,
    label_names=TASKS["mnli"].label_names,
    metrics=("accuracy",),
    splits={"test": ("diagnostic.tsv", "test-*.parquet")},
    eval_splits=(),
    submission_files={"test": "AX.tsv"},
    submit_label_names=True,
)

# Names the hub dataset ``nyu-mll/glue`` uses for each task's folder.
HUB_DATASET = "nyu-mll/glue"


def get_task(name: str) -> GlueTask:
    """Return the task called ``name`` (case-insensitive; ``sst-2``/``sts-b`` spellings accepted)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ConfigError(f"Unknown GLUE task {name!r}. Valid tasks: {', '.join(TASKS)}.")
    return TASKS[key]
