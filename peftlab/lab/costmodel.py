"""The cost model of a sweep's ``--dry_run`` and of its scheduler: how many CPU core-seconds a run, a fill job and a
chunk of runs take, from the run's data (examples, tokens per example), its method (which layers it trains, how
deep the frozen-prefix cache reaches), the model's number of layers and its epochs; and a FLOP-count estimate of a
run on a GPU. Fitted to measured runs by ``scripts/estimate_check.py --fit``."""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftlab.lab.sweepfile import Run, effective_args

if TYPE_CHECKING:
    from peftlab.lab.sweepfile import Job

logger = logging.getLogger("peftlab")

# In CPU core-seconds (a job on one core for 10 s costs 10; on two cores for 6 s, 12). "startup" is per job
# process (imports, data, tokenizing, model load); "run" per run (model copy, trainer, results); the others are per
# example at REFERENCE_TOKENS tokens: "forward" one no-grad pass of the whole backbone (a cache fill, or an
# evaluation without the cache), "read" one example served from the cache, "full" one training pass with
# everything trainable, "frozen" one training pass through the layers above the cache (scaled by their share of
# the backbone). The passes have one unit per precision (:func:`precision_suffix`): float32 (no suffix), bf16
# autocast (" bf16") and, for training, bf16 with peftlab/fastdropout.py's masks (" bf16 fast_dropout"). Fitted by
# least squares to measured jobs and runs of the bundled MiniLM:
#     python scripts/estimate_check.py docs/results/runs runs/sweeps --fit
COST = {
    "startup": 0.442, "run": 0.805, "read": 0.00028,
    "forward": 0.0262, "full": 0.0554, "frozen": 0.0303,
    "forward bf16": 0.0173, "full bf16": 0.0271, "frozen bf16": 0.0165,
    "full bf16 fast_dropout": 0.0298, "frozen bf16 fast_dropout": 0.0186,
}  # fmt: skip
REFERENCE_TOKENS = 60
TOKENS_PER_WORD = 1.2
"""Word-piece tokens per whitespace word in GLUE text, as the bundled tokenizer splits it."""


@dataclass(frozen=True)
class Workload:
    """What a run's CPU time depends on in its data: examples trained on and evaluated, and tokens per example."""

    train: int
    eval: int
    tokens: float


def workload(run: Run, glue_dir: str | os.PathLike) -> Workload:
    """The :class:`Workload` of ``run``, read from its data (token counts estimated from word counts)."""
    args = effective_args(run.args)
    return _workload(
        args["task_name"], str(glue_dir), args.get("train_split", "train"), args.get("split_dev"),
        args.get("max_train_samples"), args.get("max_eval_samples"), int(args.get("max_seq_length", 128)),
    )  # fmt: skip


@functools.cache
def _workload(task, glue_dir, train_split, split_dev, max_train, max_eval, max_seq_length) -> Workload:
    from peftlab.glue.data import load_run_data
    from peftlab.glue.tasks import get_task

    data = load_run_data(
        get_task(task), glue_dir=glue_dir, do_train=True, do_eval=True, do_predict=False, train_split=train_split,
        split_dev=split_dev, max_train_samples=max_train, max_eval_samples=max_eval,
    )  # fmt: skip
    fields = data.task.text_fields
    words = sum(len(str(text).split()) for name in fields for text in data.train[name]) / max(len(data.train), 1)
    tokens = min(TOKENS_PER_WORD * words + len(fields) + 1, max_seq_length)  # + [CLS] and one [SEP] per text
    return Workload(len(data.train), sum(len(split) for split in data.eval.values()), tokens)


def num_layers_of(run: Run) -> int:
    """The layers ``run``'s backbone has: ``--num_hidden_layers`` where it truncates, else its model's own (read from
    the model's config, not assumed)."""
    return layers_in(effective_args(run.args))


def layers_in(args: dict) -> int:
    """:func:`num_layers_of` from a run's effective arguments."""
    return int(args.get("num_hidden_layers") or encoder_shape(args.get("model_name_or_path"))[0])


def cache_depth(run: Run, num_layers: int | None = None) -> int | None:
    """The lowest trained layer of ``run`` when it reads the frozen-prefix cache (its number of layers for a probe),
    else ``None``; ``num_layers`` defaults to the run's model's (:func:`num_layers_of`)."""
    from peftlab.architectures import parse_layers  # import torch: only when estimating
    from peftlab.methods.base import METHODS, parse_method_string

    args = effective_args(run.args)
    methods = parse_method_string(args["method"])
    if not args.get("cache_frozen_prefix") or any(METHODS[name].trains_backbone for name, _ in methods):
        return None
    num_layers = num_layers or layers_in(args)

    def layers_of(spec: str) -> list[int]:  # an automatic layer is estimated at the middle one
        return [num_layers // 2] if spec == "auto" else parse_layers(spec, num_layers)

    trained = [
        layer
        for name, layers in methods
        if METHODS[name].trains_layers
        for layer in layers_of(layers or args.get("target_layers", "all"))
    ]
    return min(trained) if trained else int(args.get("num_hidden_layers") or num_layers)


def precision_suffix(args: dict, training: bool = False) -> str:
    """The suffix of a pass's :data:`COST` unit for a run's effective arguments: ``" bf16"`` under ``--bf16``, with
    ``" fast_dropout"`` after it for a training pass with ``--fast_dropout`` (dropout is off in a no-grad pass);
    float32 has none. ``--fast_dropout`` in float32 is costed as float32 with torch's dropout (not measured)."""
    if not args.get("bf16"):
        return ""
    return " bf16 fast_dropout" if training and args.get("fast_dropout") else " bf16"


AUTO_SELECTION = 0.6
"""The layer choice of a ``--target_layers auto`` run, in units of its final training (peftlab/lab/autolayer.py)."""
EPOCH_SHARE = 1.0
"""The share of its epochs a run with early stopping is expected to train (fitted with the cost model; runs
without early stopping train them all)."""


def trains_backbone(run: Run) -> bool:
    """Whether ``run`` trains the whole backbone (full fine-tuning), from its method's class."""
    return _method_class(effective_args(run.args)["method"]).trains_backbone


def resumable_progress(run: Run) -> tuple[float, bool]:
    """What an unfinished ``--resumable`` run has behind it: the epochs in its latest checkpoint (0 without one)
    and whether that checkpoint holds its layer choice (a ``--target_layers auto`` run does not choose again)."""
    from peftlab.checkpoints import complete_checkpoints, kept_choice

    found = complete_checkpoints(run.output_dir, resumable_only=True)
    if not found:
        return 0.0, False
    latest = found[max(found)]
    epoch = json.loads((latest / "trainer_state.json").read_text()).get("epoch") or 0.0
    return float(epoch), kept_choice(latest) is not None


def run_terms(run: Run, load: Workload, num_layers: int | None = None, epochs: float | None = None) -> dict[str, float]:
    """How many of each :data:`COST` unit ``run`` spends inside its job (its share of start-up and fill aside):
    every epoch it trains (``epochs``; by default its epochs, times :data:`EPOCH_SHARE` where it stops early, less
    those a resumable run has in its checkpoint) and, with per-epoch evaluation, evaluates; an automatic layer's
    choice first (unless a resumable run's checkpoint holds it), as :data:`AUTO_SELECTION` of the whole training."""
    from peftlab.lab.autolayer import wants_auto  # (import torch: only when estimating)

    args = effective_args(run.args)
    length = load.tokens / REFERENCE_TOKENS
    done, chosen = 0.0, False
    if epochs is None:
        epochs = float(args.get("num_train_epochs", 3))
        if args.get("early_stopping_patience"):
            epochs *= EPOCH_SHARE
        done, chosen = resumable_progress(run)
    whole, epochs = epochs, max(epochs - done, 0.0)
    evals = 1 + (epochs if str(args.get("eval_strategy", "no")) == "epoch" else 0)
    terms = dict.fromkeys(COST, 0.0)
    terms["run"] = 1.0
    num_layers = num_layers or layers_in(args)
    depth = cache_depth(run, num_layers)
    if wants_auto(args["method"], args.get("target_layers") or "") and not chosen:
        epochs += AUTO_SELECTION * whole  # choosing the layer first
    train, forward = precision_suffix(args, training=True), "forward" + precision_suffix(args)
    passes = length * backbone_scale(args, num_layers)  # a pass of this backbone in the bundled model's units
    if depth is None:
        kind = "full" if _method_class(args["method"]).trains_backbone else "frozen"
        terms[kind + train] = load.train * epochs * passes
        terms[forward] = evals * load.eval * passes
        return terms
    above = (num_layers - depth) / num_layers  # only the layers from the lowest trained one up run
    terms["frozen" + train] = above * load.train * epochs * passes
    terms[forward] = above * evals * load.eval * passes
    terms["read"] = (load.train * epochs + load.eval * evals) * length
    return terms


def _method_class(method: str):
    """The registered class of the first method of a ``--method`` string (its attributes answer for it)."""
    from peftlab.methods.base import METHODS, parse_method_string  # import torch: only when estimating

    return METHODS[parse_method_string(method)[0][0]]


def fill_terms(runs: list[Run], load: Workload, num_layers: int | None = None) -> dict[str, float]:
    """The units of one fill job: one pass over train and eval up to the deepest layer its runs read."""
    num_layers = num_layers or num_layers_of(runs[0])
    depths = [d for d in (cache_depth(run, num_layers) for run in runs) if d is not None]
    terms = dict.fromkeys(COST, 0.0)
    terms["startup"] = 1.0
    args = effective_args(runs[0].args)
    terms["forward" + precision_suffix(args)] = (
        (max(depths) / num_layers if depths else 0) * (load.train + load.eval) * load.tokens / REFERENCE_TOKENS
    ) * backbone_scale(args, num_layers)
    return terms


def job_terms(
    job: Job, glue_dir: str | os.PathLike, num_layers: int | None = None, fill_done: bool = False
) -> dict[str, float]:
    """The units of ``job``: start-up plus its runs' (a chunk), or its one pass (a fill; nothing once done)."""
    load = workload(job.runs[0], glue_dir)
    if job.fill:
        return dict.fromkeys(COST, 0.0) if fill_done else fill_terms(job.runs, load, num_layers)
    terms = dict.fromkeys(COST, 0.0)
    terms["startup"] = 1.0
    for run in job.runs:
        for unit, n in run_terms(run, workload(run, glue_dir), num_layers).items():
            terms[unit] += n
    return terms


GLUE_SIZES = {
    "cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500), "qqp": (363846, 40430),
    "mnli": (392702, 19647), "qnli": (104743, 5463), "rte": (2490, 277), "wnli": (635, 71),
}  # fmt: skip
"""Official GLUE (train, dev) sizes (MNLI dev: matched + mismatched), for estimates without the data at hand."""
ENCODER_SHAPES = {"roberta-base": (12, 768, 3072), "bert-base-uncased": (12, 768, 3072), "mpnet-base": (12, 768, 3072)}
"""(layers, hidden, FFN width) of the hub models the GPU sweep files name; others are read from their config."""


@functools.cache
def encoder_shape(model: str | None) -> tuple[int, int, int]:
    """(layers, hidden, FFN width) of ``model`` (a hub name, a folder, or ``None``: the bundled model)."""
    if model in ENCODER_SHAPES:
        return ENCODER_SHAPES[model]
    from transformers import AutoConfig  # a local folder or a cached hub model

    from peftlab.modeling import is_trained_run, read_model_config, resolve_model_path

    if is_trained_run(model):  # an earlier run's folder: the model it was trained from
        return encoder_shape(read_model_config(model)["base_model"])
    config = AutoConfig.from_pretrained(resolve_model_path(model))
    return config.num_hidden_layers, config.hidden_size, config.intermediate_size


def gpu_seconds(run: Run, tflops: float, tokens: int = 128) -> float:
    """A FLOP-count estimate of ``run`` on one GPU achieving ``tflops`` TFLOP/s: every example padded to
    ``tokens`` (the paper's ``pad_to_max_length``), the official split sizes, all epochs (no early stopping), one
    dev evaluation per epoch, no frozen-prefix cache. Forward = 2 x linear parameters + attention per token; the
    backward pass costs twice the forward through trained layers (input and weight gradients) and once through
    frozen layers above the lowest trained one (input gradients only)."""
    args = effective_args(run.args)
    layers, hidden, width = encoder_shape(args.get("model_name_or_path"))
    kept = int(args.get("num_hidden_layers") or layers)
    per_layer = 2 * (4 * hidden * hidden + 2 * hidden * width) + 4 * tokens * hidden
    forward = kept * per_layer * tokens
    method = _method_class(args["method"])
    if method.trains_backbone:
        backward = 2 * forward
    elif not method.trains_layers:
        backward = 0
    else:
        from peftlab.architectures import parse_layers
        from peftlab.methods.base import parse_method_string

        lowest = min(
            layer for _, spec in parse_method_string(args["method"]) for layer in parse_layers(spec or "all", kept)
        )
        backward = (kept - lowest) * per_layer * tokens
    train, dev = GLUE_SIZES[args["task_name"]]
    epochs = float(args.get("num_train_epochs", 3))
    return (epochs * train * (forward + backward) + epochs * dev * forward) / (tflops * 1e12)


REFERENCE_SHAPE = (6, 384, 1536)
"""(layers, hidden, FFN width) of the bundled MiniLM, on whose runs the :data:`COST` units are measured."""


def backbone_scale(args: dict, num_layers: int) -> float:
    """One pass of the run's backbone (``num_layers`` of its model's layers) in units of one pass of the bundled
    MiniLM, by their linear layers' FLOPs per token (layers x (4 hidden^2 + 2 hidden x FFN width)): the units are
    measured on the MiniLM, and a base-size model's layers cost several times its."""
    _, hidden, width = encoder_shape(args.get("model_name_or_path"))
    layers, ref_hidden, ref_width = REFERENCE_SHAPE
    flops = num_layers * (4 * hidden * hidden + 2 * hidden * width)
    return flops / (layers * (4 * ref_hidden * ref_hidden + 2 * ref_hidden * ref_width))


def seconds_of(terms: dict[str, float], cost: dict[str, float] | None = None) -> float:
    cost = cost or COST
    return sum(n * cost[unit] for unit, n in terms.items())


def run_cost(run: Run) -> float | None:
    """The estimated core-seconds of ``run`` (:func:`run_terms` at :data:`COST`) from its data in its
    ``glue_dir``; ``None`` when it reads no local GLUE folder (the data is not loaded from the hub only to plan)."""
    glue_dir = run.args.get("glue_dir")
    if not glue_dir or not Path(glue_dir).is_dir():
        return None
    try:
        return seconds_of(run_terms(run, workload(run, glue_dir)))
    except Exception as err:  # an estimate must never stop a sweep; the run itself reports a bad input
        logger.warning("No cost estimate for %s (%s): its chunk is cut by length.", run.name, err)
        return None
