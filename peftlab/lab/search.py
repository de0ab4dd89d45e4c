"""Hyper-parameter search through the Trainer's own ``hyperparameter_search``: Optuna or Ray Tune (PBT).

The search space is a small JSON object (a file or inline), one entry per hyper-parameter::

    {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true},
     "per_device_train_batch_size": {"type": "categorical", "choices": [16, 32]},
     "bottleneck_dim": {"type": "int", "low": 1, "high": 64, "log": true}}

Training hyper-parameters (learning rate, head learning rate, batch size, warm-up, weight decay...) are set on
the ``TrainingArguments`` of each trial by the Trainer; method and head options (``bottleneck_dim``,
``lora_rank``, ``head_dropout``...) are applied when the trial's model is built. The objective is the task's main
metric (``combined_score`` where a task has two) on the evaluation split, maximised. The best trial is saved as
``hp_search.json`` and as ``best_run.json``, an ordinary argument file: ``python run_glue.py best_run.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("optuna", "ray")
TYPES = ("float", "int", "categorical")


@dataclass
class SearchArguments:
    """Hyper-parameter search (off unless ``--hp_search`` names a backend)."""

    hp_search: str | None = field(
        default=None, metadata={"help": "Search backend: optuna (local, SQLite-backed, resumable) or ray (PBT)."}
    )
    hp_space: str | None = field(
        default=None,
        metadata={"help": "Search space: a JSON file or an inline JSON object (see peftlab/lab/search.py)."},
    )
    hp_trials: int = field(default=12, metadata={"help": "Number of trials (optuna: in total, counting resumed ones)."})
    hp_storage: str | None = field(
        default=None, metadata={"help": "Optuna storage URL; default: sqlite:///<output_dir>/optuna.db."}
    )
    hp_study_name: str = field(default="peftlab", metadata={"help": "Optuna study name inside the storage."})
    hp_seed: int = field(default=42, metadata={"help": "Seed of the search's sampler."})
    ray_address: str | None = field(
        default=None, metadata={"help": "Ray cluster address (ray.init(address=...)); default: a local Ray."}
    )
    ray_perturbation_interval: int = field(
        default=1, metadata={"help": "PBT: perturb every this many evaluations (use --eval_strategy epoch)."}
    )

    def __post_init__(self) -> None:
        if self.hp_search is not None and self.hp_search not in BACKENDS:
            raise ConfigError(f"--hp_search {self.hp_search!r} is not valid; choose one of {', '.join(BACKENDS)}.")
        if self.hp_search is not None and self.hp_space is None:
            raise ConfigError("--hp_search needs --hp_space (a JSON file or inline JSON object).")
        if self.hp_trials < 1:
            raise ConfigError(f"--hp_trials must be >= 1, got {self.hp_trials}.")


def parse_space(text: str, training_fields: set[str], model_fields: set[str]) -> dict[str, dict[str, Any]]:
    """Read and check a search space; every name must be a training, method or head option."""
    path = Path(text)
    try:
        space = json.loads(path.read_text() if not text.lstrip().startswith("{") and path.is_file() else text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--hp_space is neither a JSON file nor valid JSON: {err}") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError("--hp_space must be a non-empty JSON object of name -> {type, ...}.")
    for name, spec in space.items():
        if name not in training_fields and name not in model_fields:
            raise ConfigError(
                f"--hp_space: {name!r} is not an argument of run_glue.py (training, method or head option)."
            )
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in TYPES:
            raise ConfigError(f"--hp_space {name!r}: type {kind!r} is not one of {', '.join(TYPES)}.")
        needed = ("choices",) if kind == "categorical" else ("low", "high")
        missing = [k for k in needed if k not in spec]
        if missing:
            raise ConfigError(f"--hp_space {name!r} ({kind}) needs {missing}.")
        _check_range(name, kind, spec)
    return space


def _check_range(name: str, kind: str, spec: dict[str, Any]) -> None:
    """A range every backend can draw from, checked before any model is loaded (Optuna would fail in the first
    trial, after the model loaded, and leave a study behind)."""
    where = f"--hp_space {name!r}"
    if kind == "categorical":
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {spec['choices']!r}.")
        return
    number = int if kind == "int" else (int, float)
    low, high = spec["low"], spec["high"]
    for key, value in (("low", low), ("high", high)):
        if not isinstance(value, number) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} {value!r} is not {'a whole number' if kind == 'int' else 'a number'}.")
    if low > high:
        raise ConfigError(f"{where}: low {low} is above high {high}; give low <= high.")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got {low}.")


STUDY_KEY = "peftlab_search"
"""The user attribute of an Optuna study that records which search it holds (:func:`search_key`)."""


def search_key(space: dict[str, Any], arguments: dict[str, Any]) -> str:
    """What makes two searches the same search: the space and every argument that changes a trial's result."""
    text = json.dumps({"space": space, "arguments": arguments}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def storage_of(search_args: SearchArguments, output_dir: str | Path) -> str:
    return search_args.hp_storage or f"sqlite:///{Path(output_dir).resolve() / 'optuna.db'}"


def check_study(search_args: SearchArguments, output_dir: str | Path, key: str) -> None:
    """Refuse to continue an Optuna study that holds another search (another space, task, method or argument):
    its trials and best value would be reported as this search's. Nothing is created here."""
    if search_args.hp_search != "optuna":
        return
    storage = storage_of(search_args, output_dir)
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).is_file():
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=search_args.hp_study_name, storage=storage)
    except KeyError:
        return
    recorded = study.user_attrs.get(STUDY_KEY)
    if recorded == key or (recorded is None and not study.trials):
        return
    what = "another search (another space, task, method or argument)" if recorded else "a search made without a record of what it searched"  # fmt: skip
    raise ConfigError(
        f"--hp_search optuna: the study {search_args.hp_study_name!r} in {storage} holds {len(study.trials)} trials "
        f"of {what}; continuing it would mix them. Give --hp_study_name a new name, or another --output_dir."
    )


def optuna_space(space: dict[str, dict[str, Any]]):
    def suggest(trial) -> dict[str, Any]:
        values = {}
        for name, spec in space.items():
            if spec["type"] == "float":
                values[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
            elif spec["type"] == "int":
                values[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
            else:
                values[name] = trial.suggest_categorical(name, spec["choices"])
        return values

    return suggest


def ray_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    result = {}
    for name, spec in space.items():
        if spec["type"] == "float":
            result[name] = (tune.loguniform if spec.get("log") else tune.uniform)(spec["low"], spec["high"])
        elif spec["type"] == "int":
            result[name] = (tune.lograndint if spec.get("log") else tune.randint)(spec["low"], spec["high"] + 1)
        else:
            result[name] = tune.choice(spec["choices"])
    return result


def trial_values(trial: Any, space: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The hyper-parameters of a trial, whatever the backend hands the model factory.

    The Trainer builds a trial's model *before* it asks the search space for the trial's values, so an Optuna
    trial has none yet: suggest them here (Optuna returns the same value when the Trainer asks again).
    """
    if trial is None or space is None:
        return {}
    if isinstance(trial, dict):
        return trial
    return optuna_space(space)(trial)


def explicit_arguments(*parsed: Any) -> dict[str, Any]:
    """The non-default values of the parsed argument dataclasses, as a JSON-ready dict for run_glue.py."""
    values: dict[str, Any] = {}
    for obj in parsed:
        for f in dataclasses.fields(obj):
            if not f.init or f.name.startswith("_"):
                continue
            value = getattr(obj, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(value, enum.Enum):
                value = value.value
            # Objects built from other arguments (the accelerator config...) are rebuilt on parsing: skip them.
            if value != default and isinstance(value, (str, int, float, bool, list, type(None))):
                values[f.name] = value
    return values


@contextlib.contextmanager
def keeps_interrupt_handler():
    """Put back the process's SIGINT handler when the block ends. Ray Tune, run from the main thread, installs one
    that stops the tuning and restores the previous handler only when a SIGINT comes: after a search that ended by
    itself, the next Ctrl-C (in a later run of the same process, ``run_glue.py a.json b.json``) would be swallowed."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def run_search(
    trainer, search_args: SearchArguments, space: dict, metric: str, output_dir: str, key: str = ""
) -> dict[str, Any]:
    """Run the search with the trainer (built with ``model_init``); return the best run's summary. An Optuna study
    records ``key`` (:func:`search_key`), so that only the same search continues it (:func:`check_study`)."""
    objective_key = f"eval_{metric}"

    def objective(metrics: dict[str, float]) -> float:
        trial = getattr(trainer, "_trial", None)  # the Trainer's trial in progress
        if hasattr(trial, "set_user_attr"):  # Optuna: keep every metric of the trial's last evaluation
            trial.set_user_attr("metrics", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return metrics[objective_key]

    if search_args.hp_search == "optuna":
        n_trials, hp_space, kwargs = optuna_backend(search_args, space, output_dir, key)
    else:
        n_trials, hp_space, kwargs = ray_backend(trainer, search_args, space, output_dir)
    best = None
    if n_trials > 0:
        with keeps_interrupt_handler():  # Ray Tune installs its own Ctrl-C handler and leaves it behind
            best = trainer.hyperparameter_search(
                hp_space=hp_space, compute_objective=objective, n_trials=n_trials, direction="maximize",
                backend=search_args.hp_search, **kwargs,
            )  # fmt: skip
    summary: dict[str, Any] = {
        "backend": search_args.hp_search, "objective": objective_key, "direction": "maximize", "space": space,
    }  # fmt: skip
    if search_args.hp_search == "optuna":
        summary.update(optuna_summary(search_args, kwargs["storage"]))
    else:
        summary["best"] = {"value": best.objective, "hyperparameters": best.hyperparameters, "trial": best.run_id}
    return summary


def optuna_backend(search_args: SearchArguments, space: dict, output_dir: str, key: str):
    """The trials still to run in the run's Optuna study (made, or continued), its space and the search's options."""
    import optuna

    storage = storage_of(search_args, output_dir)
    study = optuna.create_study(
        storage=storage, study_name=search_args.hp_study_name, direction="maximize", load_if_exists=True
    )
    if STUDY_KEY not in study.user_attrs:
        study.set_user_attr(STUDY_KEY, key)
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    n_trials = max(search_args.hp_trials - done, 0)
    logger.info("Optuna study %s in %s: %d trials done, %d to go", search_args.hp_study_name, storage, done, n_trials)
    kwargs = {
        "storage": storage, "study_name": search_args.hp_study_name, "load_if_exists": True,
        "sampler": optuna.samplers.TPESampler(seed=search_args.hp_seed),
    }  # fmt: skip
    return n_trials, optuna_space(space), kwargs


def optuna_summary(search_args: SearchArguments, storage: str) -> dict[str, Any]:
    """Every trial of the study and the best one."""
    import optuna

    study = optuna.load_study(study_name=search_args.hp_study_name, storage=storage)
    trials = [
        {"number": t.number, "value": t.value, "params": t.params, "state": t.state.name,
         "metrics": t.user_attrs.get("metrics")}
        for t in study.trials
    ]  # fmt: skip
    best = {"value": study.best_value, "hyperparameters": study.best_params, "trial": study.best_trial.number}
    return {"trials": trials, "best": best}


def ray_backend(trainer, search_args: SearchArguments, space: dict, output_dir: str):
    """Ray Tune's population-based training: the trials, its space and the search's options."""
    import ray
    from ray.tune.schedulers import PopulationBasedTraining

    if not ray.is_initialized():
        # One thread per trial: Ray gives each trial one CPU (or one GPU), and torch would otherwise start as
        # many threads as the machine has cores in every trial.
        ray.init(
            address=search_args.ray_address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
        )  # fmt: skip
    kwargs = {
        "scheduler": PopulationBasedTraining(
            time_attr="training_iteration", metric="objective", mode="max",
            perturbation_interval=search_args.ray_perturbation_interval, hyperparam_mutations=ray_space(space),
        ),
        "resources_per_trial": {"cpu": 1, "gpu": 1 if trainer.args.device.type == "cuda" else 0},
        "storage_path": str(Path(output_dir).resolve() / "ray"),
        "name": search_args.hp_study_name,
    }  # fmt: skip
    return search_args.hp_trials, lambda _trial: ray_space(space), kwargs
