"""Command-line arguments of ``run_glue.py`` as dataclasses for ``transformers.HfArgumentParser``.

The same dataclasses can be filled from one JSON file (``python run_glue.py config.json``), which is how sweeps
describe their runs. ``GlueTrainingArguments`` extends ``TrainingArguments`` with the flags the paper's scripts
pass and transformers 5 dropped or renamed, so those command lines run as written.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from peftlab.glue.userfiles import LABEL_TYPES
from peftlab.modeling import BUNDLED_MODEL, HEADS, MODEL_DTYPES, POOLINGS

logger = logging.getLogger(__name__)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's avx512_bf16 or AMX kernels). Without it, bf16 autocast is
    emulated and slower than float32 (docs/performance.md, ``scripts/bf16_check.py``)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass
class ModelArguments:
    """Which pretrained backbone to start from, and the head put on it."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": f"Pretrained model: a local folder, a hub name, or a folder written by an earlier run (its "
            f"saved model is then loaded for eval/predict). Default: the bundled {BUNDLED_MODEL} (all-MiniLM-L6-v2)."
        },
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub downloads are cached."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models (never saved)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub."})
    pooling: str = field(
        default="pooler",
        metadata={
            "help": f"How token states become one vector: {', '.join(POOLINGS)} (first token, refused on decoders; "
            "attention-masked mean, the paper's 'avg'; the model's own, as *ForSequenceClassification uses: its "
            "pooler, or on a decoder the last token; the last non-padding token, left or right padding alike)."
        },
    )
    head: str = field(
        default="linear",
        metadata={
            "help": f"Classification head: {', '.join(HEADS)} (linear probe; dense-tanh-dropout-out; one bias-free "
            "linear layer without dropout, the 'score' of Llama/GPT-2 *ForSequenceClassification with --pooling last)."
        },
    )
    head_dropout: float | None = field(
        default=None, metadata={"help": "Dropout in the head; default: the model's hidden dropout."}
    )
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": f"dtype of the pretrained weights as loaded: {', '.join(MODEL_DTYPES)}. float32 (default) whatever "
            "the checkpoint was saved in; bfloat16/float16 halve a frozen backbone's memory (a large decoder) and "
            "need --bf16/--fp16 (autocast) and a method that adds its own float32 parameters (adapter, lora, prefix, "
            "probe). A trained run reloads for evaluation in float32."
        },
    )

    fast_dropout: bool = field(
        default=False,
        metadata={
            "help": "On the CPU, draw dropout masks four to a 64-bit random number (peftlab/fastdropout.py) instead of "
            "torch's one per element, which is a large share of a bf16 step; the same dropout rates, other random "
            "masks (another run than without it). No effect on a GPU."
        },
    )

    def __post_init__(self) -> None:
        if self.model_dtype not in MODEL_DTYPES:
            raise ValueError(
                f"--model_dtype {self.model_dtype!r} is not valid; choose one of {', '.join(MODEL_DTYPES)}."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"--pooling {self.pooling!r} is not valid; choose one of {', '.join(POOLINGS)}.")
        if self.head not in HEADS:
            raise ValueError(f"--head {self.head!r} is not valid; choose one of {', '.join(HEADS)}.")


@dataclass
class DataArguments:
    """Which data to train, evaluate and predict on, and how to cut it."""

    task_name: str | None = field(
        default=None,
        metadata={"help": "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli. Omit to use --train_file."},
    )
    glue_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local GLUE folder (original TSV layout, HuggingFace parquet files, or a mix). Default: the "
            "GLUE_DIR environment variable; without either, the hub dataset nyu-mll/glue is used."
        },
    )
    train_file: str | None = field(default=None, metadata={"help": "Training data (csv, tsv, json or jsonl)."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data (csv, tsv, json, jsonl)."})
    test_file: str | None = field(default=None, metadata={"help": "Prediction data (csv, tsv, json, jsonl)."})
    train_split: str = field(
        default="train",
        metadata={
            "help": "Split to train on. Offline, tasks without a train file can train on a labelled dev split, "
            "e.g. mnli: validation_mismatched (then evaluated on validation_matched)."
        },
    )
    split_dev: float | None = field(
        default=None,
        metadata={
            "help": "Hold out this fraction of the training split (seeded by --split_seed) and evaluate on it "
            "instead of the dev split, e.g. --train_split validation --split_dev 0.25 for qqp or qnli offline."
        },
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the --split_dev cut."})
    max_seq_length: int = field(
        default=128, metadata={"help": "Longer inputs are truncated; must not exceed the model's limit."}
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every batch to --max_seq_length (default: pad to the longest in batch)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N examples of each eval set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep the first N test examples."})
    label_type: str = field(
        default="auto",
        metadata={
            "help": "How the labels of --train_file are read: auto (names or whole numbers such as 0/1 or 0.0/1.0 "
            "are classes; numbers with fractions are regression scores), classification, or regression (any finite "
            "number is a score)."
        },
    )

    def __post_init__(self) -> None:
        if self.label_type not in LABEL_TYPES:
            raise ValueError(f"--label_type {self.label_type!r} is not valid; choose one of {', '.join(LABEL_TYPES)}.")
        if self.task_name and self.label_type != "auto":
            raise ValueError(
                f"--label_type {self.label_type} is for your own files (--train_file); the GLUE task "
                f"{self.task_name} fixes its labels. Drop --label_type."
            )
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be a positive number of examples, got {value}.")
        if not 0 <= self.split_seed < 2**32:
            raise ValueError(
                f"--split_seed {self.split_seed} is not valid; it must be a whole number from 0 to 2**32 - 1."
            )
        if self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length {self.max_seq_length} is too small; use at least 8.")


def strategy_name(strategy) -> str:
    """A Trainer strategy (``--eval_strategy``, ``--save_strategy``) by name: ``"no"``, ``"steps"``, ``"epoch"``...,
    whether it is still the string given or already the Trainer's enum."""
    return getattr(strategy, "value", strategy)


ALIAS_OF = {"evaluation_strategy": "eval_strategy", "group_by_length": "train_sampling_strategy",
            "warmup_ratio": "warmup_steps"}  # fmt: skip
"""Arguments of GlueTrainingArguments that only set another field when parsed, and the field each sets."""
ALIASES = tuple(ALIAS_OF)


@dataclass
class GlueTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with CPU-friendly defaults and the aliases older GLUE scripts pass."""

    output_dir: str | None = field(default=None, metadata={"help": "Where checkpoints and results go."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into a non-empty --output_dir (without it, such a run is refused)."},
    )
    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Alias of --eval_strategy (transformers < 4.46 name)."}
    )
    group_by_length: bool | None = field(
        default=None,
        metadata={"help": "Alias: true is --train_sampling_strategy group_by_length, false is random."},
    )
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "Alias: fraction of steps for warm-up (sets --warmup_steps to the ratio)."}
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improvement of --metric_for_best_model."},
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Minimum improvement that resets --early_stopping_patience."}
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "Training sampler: group_by_length (default: fewer pad tokens), random, sequential."},
    )
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size for eval and predict."})
    save_strategy: str = field(
        default="no",
        metadata={
            "help": "Checkpoint strategy: no (default; the final model is still saved), steps, epoch, best. "
            "--load_best_model_at_end sets it to the eval strategy when left at no."
        },
    )
    cache_frozen_prefix: bool = field(
        default=True,
        metadata={
            "help": "Compute the frozen layers below the lowest trained one once (eval mode: no dropout there), "
            "store them on disk, and train only the layers above on them. For a probe, cache the pooled features. "
            "Not given: on for a training run whose method leaves the layers below it frozen, where the model "
            "supports it, else off; given: on, refused where it cannot be; false: those layers run in train mode "
            "(dropout) at every step, as the paper's code."
        },
    )
    frozen_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the frozen-prefix cache lives (default: $PEFTLAB_CACHE/frozen_prefix or ~/.cache/peftlab/frozen_prefix)."
        },
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the classification head (default: --learning_rate)."},
    )
    metric_for_best_model: str | None = field(
        default=None,
        metadata={"help": "Metric that picks the best model; 'main' (default) is the task's main metric."},
    )
    best_model_in_memory: bool = field(
        default=True,
        metadata={
            "help": "With --load_best_model_at_end and no --save_strategy: keep the best evaluation's trainable "
            "parameters in memory and restore them at the end, instead of writing a checkpoint every evaluation "
            "(false: the Trainer's checkpoints, which a killed run can resume from)."
        },
    )
    resumable: bool = field(
        default=False,
        metadata={
            "help": "Write the training state into --output_dir/checkpoint-<step> at every evaluation (every epoch "
            "without evaluations) and every --resumable_minutes between them, keeping the latest only; started "
            "again on that folder with the same arguments, the run resumes from it and ends as if never stopped; "
            "the checkpoint is removed when the run ends. "
            "Sweeps set it. (--save_strategy with --resume_from_checkpoint: the Trainer's checkpoints, kept.)"
        },
    )
    resumable_minutes: float = field(
        default=10.0,
        metadata={
            "help": "With --resumable: also write the checkpoint once this many minutes of training have passed since "
            "the last one, in the middle of an epoch (resumed there exactly), so a stopped run loses at most that "
            "much; 0: at evaluations only (as under torchrun)."
        },
    )
    save_model: bool = field(
        default=True,
        metadata={"help": "Write the trained weights and tokenizer at the end (sweeps that need only scores: false)."},
    )
    cache_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the frozen-prefix cache's stored activations: float32, bfloat16 or float16."},
    )

    def __post_init__(self) -> None:
        if self.evaluation_strategy is not None:
            logger.info("--evaluation_strategy is an alias of --eval_strategy")
            self.eval_strategy = self.evaluation_strategy
        if self.group_by_length is not None:
            self.train_sampling_strategy = "group_by_length" if self.group_by_length else "random"
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"--warmup_ratio {self.warmup_ratio} must be in [0, 1).")
            self.warmup_steps = self.warmup_ratio
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ValueError(f"--early_stopping_patience must be >= 1, got {self.early_stopping_patience}.")
            if strategy_name(self.eval_strategy) == "no":
                raise ValueError("--early_stopping_patience needs evaluations: set --eval_strategy epoch or steps.")
            self.load_best_model_at_end = True
        self.check_values()
        if self.cache_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"--cache_dtype {self.cache_dtype!r} is not valid; choose one of float32, bfloat16, float16."
            )
        if not (math.isfinite(self.resumable_minutes) and self.resumable_minutes >= 0):
            raise ValueError(
                f"--resumable_minutes {self.resumable_minutes} is not valid; give minutes >= 0 (0: checkpoints at "
                "evaluations only), e.g. 10."
            )
        if self.resumable and (strategy_name(self.save_strategy) != "no" or self.save_only_model):
            option = "--save_only_model" if self.save_only_model else f"--save_strategy {self.save_strategy}"
            raise ValueError(
                f"--resumable writes its own checkpoints (the whole training state at every evaluation, the latest "
                f"kept, removed at the end): drop {option}, or drop --resumable to keep the Trainer's checkpoints."
            )
        if self.load_best_model_at_end and strategy_name(self.eval_strategy) == "no":
            raise ValueError(
                "--load_best_model_at_end keeps the best evaluation, but --eval_strategy is no (nothing is evaluated "
                "during training): set --eval_strategy epoch (or steps), or drop --load_best_model_at_end."
            )
        self.select_best_in_memory = False
        """Set when the best evaluation is kept in memory (the Trainer's own load_best_model_at_end is then off)."""
        self.resolve_checkpointing()
        if not torch.cuda.is_available():
            self.resolve_cpu()
        super().__post_init__()

    def resolve_checkpointing(self) -> None:
        """How the best evaluation is kept (in memory, or the Trainer's checkpoints) and a ``--resumable`` run's
        checkpoint at every evaluation."""
        if self.load_best_model_at_end:
            if self.metric_for_best_model is None:
                self.metric_for_best_model = "main"
            if strategy_name(self.save_strategy) == "no":
                if self.best_model_in_memory:
                    self.select_best_in_memory, self.load_best_model_at_end = True, False
                else:
                    self.save_strategy = str(self.eval_strategy)
                    if self.save_total_limit is None:
                        self.save_total_limit = 1
        if self.resumable:
            if strategy_name(self.save_strategy) == "no":  # (the best-model selection may have set it to eval's)
                evaluation = strategy_name(self.eval_strategy)
                self.save_strategy = "epoch" if evaluation == "no" else evaluation
                if evaluation == "steps":
                    self.save_steps = self.eval_steps if self.eval_steps is not None else self.logging_steps
                self.save_total_limit = 1
            self.restore_callback_states_from_checkpoint = True  # the early-stopping counter

    def resolve_cpu(self) -> None:
        """What training without a CUDA GPU needs."""
        if self.bf16 and not self.use_cpu:
            self.use_cpu = True  # bf16 autocast on the CPU (the Trainer asks for use_cpu to allow it)
        if self.bf16 and not cpu_has_fast_bf16():
            logger.warning(
                "--bf16 on a CPU without native bf16 (no avx512_bf16 or AMX; torch reports %s): its bf16 matmuls "
                "run several times slower than float32 here. Leave --bf16 out on this machine (a run's scores "
                "equal float32's, docs/performance.md).", torch.backends.cpu.get_cpu_capability(),
            )  # fmt: skip
        self.dataloader_pin_memory = False  # pinning needs an accelerator; it only warns without one
        if self.ddp_backend is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Under torchrun on CPUs, transformers would otherwise run N independent single-process
            # trainings (each on all the data, all writing the same output folder).
            self.ddp_backend = "gloo"

    def check_values(self) -> None:
        """Values that would fail deep inside training (a traceback after the data is loaded) or, worse, train
        nothing and report the untrained model as a finished run: refused here, before anything is loaded."""
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name} {value} is not valid; it must be a whole number >= 1.")
        for name in ("learning_rate", "head_learning_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name} {value} is not valid; it must be a finite number >= 0, e.g. 5e-5.")
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**32:
                raise ValueError(f"--{name} {value} is not valid; it must be a whole number from 0 to 2**32 - 1.")
        if not math.isfinite(self.num_train_epochs) or self.num_train_epochs < 0:
            raise ValueError(f"--num_train_epochs {self.num_train_epochs} is not valid; it must be > 0, e.g. 3.")
        if self.do_train:
            self.check_training_length()

    def check_training_length(self) -> None:
        """A training run must take at least one step: with --num_train_epochs 0 (and no --max_steps) it would
        write the results of the untrained model, and a sweep would count it as finished."""
        if self.max_steps is not None and self.max_steps > 0:
            return
        if self.num_train_epochs <= 0:
            raise ValueError(
                f"--num_train_epochs {self.num_train_epochs:g} trains nothing; give a number of epochs > 0 "
                "(e.g. 3) or --max_steps > 0, or drop --do_train to evaluate only."
            )
        if self.learning_rate == 0 and not self.head_learning_rate:
            raise ValueError(
                "--learning_rate 0 trains nothing (and no --head_learning_rate is given); give a learning rate > 0, "
                "e.g. 5e-5, or drop --do_train to evaluate only."
            )
