"""The HF ``Trainer`` with the few things a PEFT classifier run needs, and nothing copied from its internals."""

from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PrinterCallback, Trainer, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from peftlab.checkpoints import BEST_NAME, LOSS_SUM, ORDER_NAME, RESUME_NAME, resume_record
from peftlab.io import write_json
from peftlab.modeling import SequenceClassifier, save_model_config

logger = logging.getLogger("peftlab")


class LogCallback(TrainerCallback):
    """The Trainer's log lines through the ``peftlab`` logger (so they also reach each run's ``log.txt``)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            logger.info("%s", {k: round(v, 6) if isinstance(v, float) else v for k, v in logs.items()})


def mid_epoch(state) -> bool:
    """Whether training stands inside an epoch (``state.epoch`` counts the epochs trained, in fractions of one)."""
    return not float(state.epoch or 0).is_integer()


class OrderedSampler(LengthGroupedSampler):
    """The Trainer's ``LengthGroupedSampler`` (batches of similar lengths, in an order drawn from torch's random
    state when an epoch starts) that remembers the state it drew from (``drawn_from``). A checkpoint written in the
    middle of an epoch records it, and the run resumed there draws that epoch's order again from it (``replay``)
    while the Trainer skips the batches already trained, so the rest of the epoch is the batches it would have had.
    (The Trainer's own seedable sampler does this for random order; this order is not seedable.)"""

    drawn_from: torch.Tensor | None = None
    replay: torch.Tensor | None = None

    def __iter__(self):
        if self.generator is not None:
            raise ValueError("OrderedSampler draws from torch's global random state; give it no generator.")
        now, replay = torch.get_rng_state(), self.replay
        if replay is not None:
            torch.set_rng_state(replay)
            self.replay = None
        self.drawn_from = torch.get_rng_state()
        order = super().__iter__()
        if replay is not None:
            torch.set_rng_state(now)  # the resumed run's own random state goes on (the Trainer restores it next)
        return order


class TimedCheckpoints(TrainerCallback):
    """``--resumable``: also a checkpoint once ``minutes`` of training have passed since the last one, between
    evaluations (never on an epoch's last step: that epoch's evaluation and checkpoint come right after it)."""

    def __init__(self, minutes: float) -> None:
        self.seconds, self.last = minutes * 60, time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() - self.last >= self.seconds and mid_epoch(state):
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self.last = time.time()


TENSORBOARD_DIR = "tensorboard"
"""The folder of a run's ``--output_dir`` that ``--report_to tensorboard`` writes its events into."""


class RunTensorBoard(TensorBoardCallback):
    """``--report_to tensorboard`` into the run's own folder, ``<output_dir>/tensorboard``, whatever
    ``TENSORBOARD_LOGGING_DIR`` says, so that every run of a sweep (each its own folder) is one TensorBoard run under
    the sweep's root. The first events a run writes replace those an earlier run left there (``--overwrite_output_dir``),
    except in a run resumed from a checkpoint: it goes on with the same TensorBoard run, which drops what the stopped
    start logged after the checkpoint. A search's trials go into ``tensorboard/run-<trial>`` (``trial``, named as the
    Trainer names their checkpoints' folders). Evaluations after training are written at once, their file closed.
    (The Trainer's own callback writes into ``<output_dir>/runs/<date>_<host>``, another one at every start, and for
    a run that only evaluates into ``./runs``, wherever it is started.)"""

    def __init__(self, output_dir: str) -> None:
        super().__init__()
        self.root = self.logging_dir = str(Path(output_dir) / TENSORBOARD_DIR)
        self.trial: str | None = None
        self.training = False
        self.written: set[str] = set()  # the folders this run has written events into

    def open(self, resumed_at: int = 0) -> None:
        """The writer into ``logging_dir``; resumed at a step, it has TensorBoard drop what came after that step."""
        if resumed_at > 0:
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=resumed_at + 1)
        else:
            if self.logging_dir not in self.written:
                for earlier in Path(self.logging_dir).glob("events.out.tfevents.*"):
                    earlier.unlink()
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir)
        self.written.add(self.logging_dir)

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        if not state.is_world_process_zero:
            return
        logging_dir = str(Path(self.root) / self.trial) if self.trial else self.root
        if logging_dir != self.logging_dir:
            self.close()
            self.logging_dir = logging_dir
        if self.tb_writer is None:
            self.open(resumed_at=state.global_step)
        ours = copy.copy(state)
        ours.is_hyper_param_search = False  # (the Trainer's callback would put a trial into a folder of its own)
        super().on_train_begin(args, ours, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.tb_writer is None:
            self.open()
        super().on_log(args, state, control, logs=logs, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        super().on_train_end(args, state, control, **kwargs)

    def on_evaluate(self, args, state, control, **kwargs):
        if not self.training:
            self.close()

    def close(self) -> None:
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


def trial_folder(trial: Any) -> str | None:
    """The folder of a search trial, ``run-<id>`` as the Trainer names its checkpoints' (None: not a trial)."""
    if trial is None:
        return None
    number = getattr(trial, "number", None)  # Optuna
    if number is None:
        try:
            import ray.tune

            number = ray.tune.get_context().get_trial_id()
        except Exception:  # (no Ray, or not inside a Ray trial)
            return None
    return f"run-{number}"


class GlueTrainer(Trainer):
    """``Trainer`` that saves only what trained (plus the model's config), gives the head its own learning rate,
    groups batches by the lengths computed at tokenization, and can keep its best evaluation in memory.

    Best-model selection in memory (``args.select_best_in_memory``): at each evaluation the Trainer decides as
    usual whether the metric improved (``metric_for_best_model``, ``greater_is_better``); if so, a copy of the
    trainable parameters (everything under full fine-tuning) is kept, and it is loaded back when training ends.
    No checkpoint is written per evaluation: for a frozen backbone that copy holds only the method's and the head's
    parameters.

    Checkpoints (``--resumable``, or the Trainer's own) also carry that copy and the run's time so far
    (:mod:`peftlab.checkpoints`): ``run_clock`` is when the run started (wall and process CPU time, set by the
    caller), ``resume_extras`` what else the run's checkpoints record (a ``--target_layers auto`` run's choice), and
    after training ``resumed`` says what came from a checkpoint (``None``: nothing). A ``--resumable`` run also
    writes one every ``--resumable_minutes`` between evaluations (:class:`TimedCheckpoints`); written inside an
    epoch, it records where that epoch's batch order came from (:class:`OrderedSampler`).
    """

    def __init__(self, *args, resume_arguments: dict[str, Any] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.pop_callback(PrinterCallback) is not None:
            self.add_callback(LogCallback())
        if self.pop_callback(TensorBoardCallback) is not None:
            self.add_callback(RunTensorBoard(self.args.output_dir))
        if getattr(self.args, "resumable", False) and self.args.resumable_minutes > 0:
            if self.args.world_size == 1:  # (processes that each read their own clock could disagree on a save)
                self.add_callback(TimedCheckpoints(self.args.resumable_minutes))
            else:
                logger.info("--resumable_minutes: with %d processes, checkpoints at evaluations only.",
                            self.args.world_size)  # fmt: skip
        self._order: OrderedSampler | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_step: int | None = None
        self._train_started = time.time()
        self.resume_arguments = resume_arguments or {}
        self.resume_extras: dict[str, Any] = {}
        self.run_clock = (time.time(), time.process_time())
        self.resumed: dict[str, Any] | None = None
        self._loss_before: float | None = 0.0

    def _classifier(self) -> SequenceClassifier | None:
        model = self.accelerator.unwrap_model(self.model)
        return model if isinstance(model, SequenceClassifier) else None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self._classifier()
        if model is not None and state_dict is None:
            state_dict = model.trainable_state_dict()
        super()._save(output_dir, state_dict)
        if model is not None and self.args.should_save:
            save_model_config(output_dir or self.args.output_dir, **model.export_config())

    def _issue_warnings_after_load(self, load_result) -> None:
        # Checkpoints hold only the trained parameters: the frozen ones are missing by design.
        model = self._classifier()
        if model is not None:
            frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
            load_result.missing_keys[:] = [k for k in load_result.missing_keys if k not in frozen]
        super()._issue_warnings_after_load(load_result)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the head's parameters moved to groups at ``--head_learning_rate``."""
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        head_lr = getattr(self.args, "head_learning_rate", None)
        classifier = self._classifier()
        if created and head_lr is not None and classifier is not None:
            head = {id(p) for p in classifier.head.parameters()}
            groups = []
            for group in optimizer.param_groups:
                for in_head in (False, True):
                    params = [p for p in group["params"] if (id(p) in head) == in_head]
                    if params:
                        groups.append({**group, "params": params, "lr": head_lr if in_head else group["lr"]})
            optimizer.param_groups[:] = groups
        return optimizer

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        # The Trainer drops unused columns (our precomputed "length" too) before it builds the sampler and would
        # then count every example's tokens again; give it the lengths we already have.
        dataset = self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if lengths is None and self.args.length_column_name in getattr(dataset, "column_names", ()):
            lengths = dataset[self.args.length_column_name]
        if self.args.train_sampling_strategy == "group_by_length" and self.args.world_size == 1 and lengths is not None:
            self._order = OrderedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=lengths
            )
            return self._order
        return super()._get_train_sampler(train_dataset)

    def _determine_best_metric(self, metrics: dict[str, float], trial) -> bool:
        is_new_best = super()._determine_best_metric(metrics, trial)
        model = self._classifier()
        if is_new_best and self.args.select_best_in_memory and model is not None:
            self._best_state = {k: t.detach().clone() for k, t in model.trainable_state_dict().items()}
            self._best_step = self.state.global_step
        return is_new_best

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint. With the best evaluation kept in memory (and so in every checkpoint), the
        Trainer is not told the best step while it saves: it would keep that step's checkpoint beside the latest."""
        if not self.args.select_best_in_memory:
            return super()._save_checkpoint(model, trial)
        self.state.best_global_step = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.state.best_global_step = self._best_step

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """The Trainer's optimizer and scheduler, then what else the run needs to resume as if never stopped: the
        best evaluation kept in memory and the time taken so far (all before ``trainer_state.json``, which the
        Trainer writes last and which marks the checkpoint complete)."""
        super()._save_optimizer_and_scheduler(output_dir)
        if not self.args.should_save:
            return
        if self._best_state is not None:
            save_file({k: t.contiguous() for k, t in self._best_state.items()}, str(Path(output_dir) / BEST_NAME))
        if self._order is not None and self._order.drawn_from is not None and mid_epoch(self.state):
            save_file({"rng_state": self._order.drawn_from}, str(Path(output_dir) / ORDER_NAME))  # mid-epoch
        earlier = self.resumed or {}
        wall, cpu = self.run_clock
        loss = self._loss_so_far()
        write_json(Path(output_dir) / RESUME_NAME, {
            **self.resume_extras,
            "arguments": self.resume_arguments,
            "best_step": self._best_step,
            "starts": earlier.get("starts", 0) + 1,
            "wall_seconds": round(earlier.get("wall_seconds", 0.0) + time.time() - wall, 2),
            "cpu_seconds": round(earlier.get("cpu_seconds", 0.0) + time.process_time() - cpu, 2),
            "train_seconds": round(earlier.get("train_seconds", 0.0) + time.time() - self._train_started, 2),
            **({} if loss is None else {LOSS_SUM: loss}),
        })  # fmt: skip

    def _loss_so_far(self) -> float | None:
        """The sum of the training loss over every step so far, this start's and the earlier ones' (``None`` when an
        earlier start's is not known: a checkpoint that does not record it). The Trainer adds each logging
        interval's sum to ``_total_loss_scalar`` and holds the interval in progress in ``_tr_loss``."""
        if self._loss_before is None:
            return None
        pending = getattr(self, "_tr_loss", None)
        this_start = getattr(self, "_total_loss_scalar", 0.0) + (float(pending.item()) if pending is not None else 0.0)
        return self._loss_before + this_start

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint)
        record = resume_record(path)
        self.resumed = {"checkpoint": str(path), "step": self.state.global_step, "starts": record.get("starts", 1)}
        self.resumed.update({k: record[k] for k in ("wall_seconds", "cpu_seconds", "train_seconds") if k in record})
        self._loss_before = record.get(LOSS_SUM)
        if (path / ORDER_NAME).is_file() and self._order is not None:
            self._order.replay = load_file(str(path / ORDER_NAME))["rng_state"]
        model = self._classifier()
        if (path / BEST_NAME).is_file() and model is not None:
            self._best_state = load_file(str(path / BEST_NAME), device=str(next(model.parameters()).device))
            self._best_step = self.state.best_global_step = record.get("best_step")

    def train(self, *args, **kwargs):
        self._best_state, self._best_step, self.resumed, self._train_started = None, None, None, time.time()
        self._loss_before: float | None = 0.0  # the loss summed over the steps before this start (none yet)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, RunTensorBoard):
                callback.trial = trial_folder(kwargs.get("trial"))
        output = super().train(*args, **kwargs)
        if self.resumed is not None:
            output = self._whole_run_loss(output)
        model = self._classifier()
        if self._best_state is not None and model is not None:
            model.load_state_dict(self._best_state, strict=False)
            logger.info("Loaded the best evaluation's parameters (eval_%s %s).", self.args.metric_for_best_model,
                        self.state.best_metric)  # fmt: skip
        return output

    def _whole_run_loss(self, output):
        """A resumed run's ``train_loss`` over all its steps, as the run never stopped would report it: the Trainer's
        own is the mean over the steps of this start only. Left as the Trainer's when the checkpoint does not record
        the earlier steps' loss."""
        before, steps = self._loss_before, self.state.global_step
        if before is None or steps <= 0:
            logger.warning("The checkpoint records no training loss of the steps before it: train_loss is the mean "
                           "over the %d steps after it only.", steps - self.resumed["step"])  # fmt: skip
            return output
        loss = (before + output.training_loss * (steps - self.resumed["step"])) / steps
        output.metrics["train_loss"] = loss
        return output._replace(training_loss=loss)

    def evaluation_of_final_model(self) -> dict[str, float] | None:
        """The metrics of the model as it is after training, when training already computed them on the first
        evaluation set: the kept best evaluation (restored from memory), or an evaluation at the very last step.
        Evaluating again would give the same numbers (same weights, same data, eval mode); ``None`` otherwise."""
        evaluations = [entry for entry in self.state.log_history if any(k.startswith("eval_") for k in entry)]
        if not evaluations:
            return None
        if self._best_state is not None:
            entry = self.selection_summary().get("best_evaluation")
        elif not self.args.load_best_model_at_end and evaluations[-1].get("step") == self.state.global_step:
            entry = evaluations[-1]
        else:
            entry = None
        if entry is None:
            return None
        return {k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"}

    def selection_summary(self) -> dict[str, Any]:
        """Every evaluation during training, the one the reported model comes from, and the last one: so that both
        the best-epoch and the last-epoch score of a run can be read from its results."""
        evaluations = [entry for entry in self.state.log_history if any(k.startswith("eval_") for k in entry)]
        if not evaluations:
            return {}
        summary: dict[str, Any] = {"evaluations": evaluations, "last_evaluation": evaluations[-1]}
        metric = self.args.metric_for_best_model
        if metric and (self.args.select_best_in_memory or self.args.load_best_model_at_end):
            key = metric if metric.startswith("eval_") else f"eval_{metric}"
            best = next((e for e in evaluations if e.get(key) == self.state.best_metric), None)
            summary["best_evaluation"] = best
        return summary

    def evaluation_loop(self, *args, **kwargs):
        """Evaluate and predict with the methods folded into the base weights where they can be (LoRA: see
        ``Method.merged_for_eval``); the weights are restored bit for bit after."""
        model = self._classifier()
        with model.merged_for_eval() if model is not None else nullcontext():
            return super().evaluation_loop(*args, **kwargs)
