"""The checkpoints a run resumes from: the Trainer's (``--save_strategy`` with ``--resume_from_checkpoint``) and
those of ``--resumable`` runs.

A ``--resumable`` run writes its training state into ``--output_dir/checkpoint-<step>`` at every evaluation (every
epoch when it does not evaluate), keeps only the latest, and removes it when the run ends. Started again on the
same folder with the same arguments, it resumes from that checkpoint and ends as if it had never stopped: the
Trainer restores the trained parameters, optimizer, scheduler, random state and log history, the early-stopping
counter comes back with the callbacks' state, and the checkpoint also carries (:data:`RESUME_NAME`,
:data:`BEST_NAME`) the best evaluation kept in memory and the time the run has taken so far, so that its results
report the whole run's CPU and wall time. The same arguments are checked: a checkpoint of another model
(:func:`check_checkpoint_fits`) or of other training or data arguments (:func:`check_same_arguments`) is refused
before any model is loaded.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError
from peftlab.modeling import MODEL_CONFIG_NAME

logger = logging.getLogger("peftlab")

CHECKPOINT_PREFIX = "checkpoint-"
RESUME_NAME = "peftlab_resume.json"
"""In a ``--resumable`` checkpoint: the run's arguments, the time it took before this checkpoint and, for a
``--target_layers auto`` run, the layer it chose (the choice is not made again when it resumes)."""
BEST_NAME = "best_evaluation.safetensors"
"""In a ``--resumable`` checkpoint: the trainable parameters of the best evaluation so far (kept in memory)."""
AUTO_CHOICE = "auto_layer"
"""The key of a ``--target_layers auto`` run's layer choice in :data:`RESUME_NAME` (its record, as in its results)."""
LOSS_SUM = "train_loss_sum"
"""The key in :data:`RESUME_NAME` of the training loss summed over every step before the checkpoint, so that a resumed
run reports the whole run's mean ``train_loss`` (the Trainer's own covers the steps after the checkpoint only)."""
ORDER_NAME = "epoch_order_rng.safetensors"
"""In a checkpoint written in the middle of an epoch: the random state that epoch's batch order was drawn from."""
NOT_COMPARED = frozenset({
    "output_dir", "logging_dir", "overwrite_output_dir", "resume_from_checkpoint", "disable_tqdm", "logging_steps",
    "do_eval", "do_predict", "max_predict_samples", "save_model", "frozen_cache_dir",
    "report_to", "run_name", "resumable_minutes",
})  # fmt: skip
"""Arguments a resumed run may change: where and what it writes and logs, and what it predicts after training (what
it evaluates is compared: the best epoch is picked across every evaluation, before and after the stop)."""
DATA_DIGEST = "data_digest"
"""The key among a resumable run's arguments of the digest of its training and evaluation data
(:func:`peftlab.glue.data.data_digest`): a run whose files were edited since its checkpoint is not resumed."""


def checkpoint_folders(out: Path) -> dict[int, Path]:
    """Every ``checkpoint-<step>`` folder in ``out`` by step, complete or not."""
    return {
        int(path.name[len(CHECKPOINT_PREFIX) :]): path
        for path in (out.iterdir() if out.is_dir() else [])
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and path.name[len(CHECKPOINT_PREFIX) :].isdigit()
    }


def complete_checkpoints(out: Path, *, resumable_only: bool = False) -> dict[int, Path]:
    """The complete checkpoints in ``out`` by step (the Trainer writes ``trainer_state.json`` last); with
    ``resumable_only``, those a ``--resumable`` run wrote."""
    return {
        step: path
        for step, path in checkpoint_folders(out).items()
        if (path / "trainer_state.json").is_file() and (not resumable_only or (path / RESUME_NAME).is_file())
    }


def names_checkpoint(value: Any) -> bool:
    """Whether a ``--resume_from_checkpoint`` value asks for a checkpoint (``True`` or a folder; not unset or
    ``False``)."""
    return value is not None and str(value).strip().lower() not in ("", "false")


def resume_record(checkpoint: str | Path | None) -> dict[str, Any]:
    """What a checkpoint's :data:`RESUME_NAME` records (``{}`` for none, or a checkpoint of the Trainer's own)."""
    record = Path(checkpoint) / RESUME_NAME if checkpoint else None
    return json.loads(record.read_text()) if record is not None and record.is_file() else {}


def kept_choice(checkpoint: str | Path | None) -> dict[str, Any] | None:
    """The layer choice a ``--target_layers auto`` run made before it wrote ``checkpoint`` (``None``: none kept)."""
    return resume_record(checkpoint).get(AUTO_CHOICE)


def resolve_checkpoint(training_args, arguments: dict[str, Any]) -> str | None:
    """The checkpoint the run resumes from. ``--resume_from_checkpoint``: ``True`` is the latest complete
    ``checkpoint-<step>`` in ``--output_dir`` (as the Trainer's own ``resume_from_checkpoint=True``), a path that
    folder, ``False`` none; a checkpoint that is not there is an error now, not after the data and model are loaded.
    Without it, a ``--resumable`` run resumes from the latest checkpoint of its own, if any, made by a run with the
    same ``arguments`` (:func:`resume_arguments`; an explicit checkpoint may be resumed with others, e.g. more
    epochs)."""
    value = training_args.resume_from_checkpoint
    if not training_args.do_train:
        return None
    out = Path(training_args.output_dir)
    if not names_checkpoint(value):
        if not training_args.resumable:
            return None
        own = complete_checkpoints(out, resumable_only=True)
        if not own:
            return None
        latest = own[max(own)]
        check_same_arguments(latest, arguments)
        logger.info("--resumable: resuming from %s.", latest)
        return str(latest)
    if str(value).strip().lower() == "true":
        complete = complete_checkpoints(out)
        if not complete:
            raise ConfigError(
                f"--resume_from_checkpoint True: --output_dir {str(out)!r} holds no complete checkpoint-<step> folder "
                "to resume from. A run writes checkpoints only with --save_strategy steps or epoch (or --resumable); "
                "give a checkpoint folder, or train from the start without --resume_from_checkpoint."
            )
        latest = complete[max(complete)]
        if max(checkpoint_folders(out)) != max(complete):
            logger.warning("The latest checkpoint in %s is incomplete (no trainer_state.json): resuming from %s.",
                           out, latest)  # fmt: skip
        return str(latest)
    path = Path(str(value))
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(
            f"--resume_from_checkpoint {str(value)!r} is not a checkpoint folder (no trainer_state.json in it); give "
            "a checkpoint-<step> folder of an earlier run, or True for the latest one in --output_dir."
        )
    return str(path)


def resume_arguments(*groups) -> dict[str, Any]:
    """The arguments a resumed run must share with the run that wrote its checkpoint: every argument of the given
    dataclasses but :data:`NOT_COMPARED`, as JSON values."""
    values: dict[str, Any] = {}
    for group in groups:
        values.update(group.to_dict() if hasattr(group, "to_dict") else asdict(group))
    kept = {k: v for k, v in values.items() if k not in NOT_COMPARED and not k.startswith(("hub_", "push_to_hub"))}
    return json.loads(json.dumps(kept, default=str))


def check_same_arguments(checkpoint: str | Path, arguments: dict[str, Any]) -> None:
    """Refuse a ``--resumable`` checkpoint written by a run with other arguments (another learning rate, number of
    epochs, seed, task...): the resumed run would be neither. A checkpoint without the record (the Trainer's own)
    is not checked here."""
    saved = resume_record(checkpoint).get("arguments", {})
    differences = [f"{k} {saved[k]!r} there, {v!r} here" for k, v in arguments.items() if k in saved and saved[k] != v]
    if differences:
        raise ConfigError(
            f"--resumable: {str(checkpoint)!r} is a checkpoint of a run with other arguments "
            f"({'; '.join(differences[:4])}). Resume with the arguments it was trained with, or delete that folder (or "
            "choose another --output_dir) to train from the start."
        )


def check_checkpoint_fits(checkpoint: str, model, base_model: str) -> None:
    """Refuse to resume from a checkpoint of another model (another method, layers, options, head or base model):
    the Trainer would load what fits, warn about the rest and train on, reporting a run that is neither."""
    path = Path(checkpoint)
    if not (path / MODEL_CONFIG_NAME).is_file():
        raise ConfigError(
            f"--resume_from_checkpoint {checkpoint!r} has no {MODEL_CONFIG_NAME}: it was not written by a peftlab run, "
            "so it cannot be checked against this one. Train from the start without --resume_from_checkpoint."
        )
    saved = json.loads((path / MODEL_CONFIG_NAME).read_text())
    wanted = {"base_model": base_model, "head": asdict(model.head_config), "peft": asdict(model.peft_args)}
    differences = []
    for part in ("base_model", "head", "peft"):
        there, here = saved.get(part), wanted[part]
        if isinstance(here, dict) and isinstance(there, dict):
            differences += [
                f"{k} {there[k]!r} there, {here[k]!r} here" for k in here if k in there and there[k] != here[k]
            ]
        elif there != here:
            differences.append(f"{part} {there!r} there, {here!r} here")
    if differences:
        raise ConfigError(
            f"--resume_from_checkpoint {checkpoint!r} is a checkpoint of another model ({'; '.join(differences[:4])}). "
            "Resume with the arguments it was trained with, or train from the start without --resume_from_checkpoint."
        )


def remove_checkpoints(out: Path) -> None:
    """Delete the checkpoints of a ``--resumable`` run that has ended (its results written)."""
    for path in checkpoint_folders(out).values():
        shutil.rmtree(path, ignore_errors=True)
