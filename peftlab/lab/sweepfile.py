"""The schema of a sweep file, checked whole before anything runs.

A sweep file (see :mod:`peftlab.lab.sweep` for what each key does) is refused, with a line naming the file, the key and
what is valid, when it has a key the schema does not know, a value of the wrong type, a name that is not one plain
folder name (a sweep's runs are written under ``--root/<name>/<task>/<variant>/...`` and nowhere else), an axis
that repeats a value, a ``per_*`` variant without its axis, or a key that the sweep itself sets on every run.
What a variant's options mean is checked by parsing every run's arguments with ``run_glue.py``'s own parser
(:func:`check_runs`), in the driver, before the first job starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError
from peftlab.jsontypes import did_you_mean, fits, type_name

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
"""A sweep, task or variant name: one folder name, no separators, not ``.`` or ``..``."""
PER_AXIS = {"per_layer": "layers", "per_bottleneck": "bottleneck_dims", "per_pooling": "poolings"}
"""A variant's flags that put it on one of the sweep's axes, and the axis each needs."""
SET_BY_THE_SWEEP = ("output_dir", "task_name", "seed")
"""Run arguments the sweep gives every run itself (from ``--root``, ``tasks`` and ``seeds``)."""
RESULTS = "all_results.json"
"""A run's results; its presence marks the run finished."""


@dataclass
class Run:
    name: str
    point: dict[str, Any]
    args: dict[str, Any]

    @property
    def output_dir(self) -> Path:
        return Path(self.args["output_dir"])

    @property
    def finished(self) -> bool:
        return (self.output_dir / RESULTS).is_file()


REUSED = "reused_from.txt"
"""In a run folder whose results were copied from an identical finished run: that run's folder."""
JOBS = ".jobs"
"""A sweep's job files, logs and results, under ``--root/<name>/``."""
DRIVER = "driver.json"
"""In ``.jobs/``: what the latest start of the sweep's driver planned (its runs, its jobs and their estimates, its
workers and threads, its process), read by ``peftlab sweep --status``. Not a job file: it has no result file."""


@dataclass
class Job:
    """Runs done by one process: a fill job computes their frozen-prefix caches, a chunk trains them."""

    name: str
    runs: list[Run]
    fill: bool = False
    after: Job | None = None
    """The fill job this chunk waits for (its caches are then on disk)."""

    def file(self, root: Path) -> Path:
        return root / JOBS / f"{self.name}.json"


def effective_args(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with its protocol preset filled in under it (the values the run will have)."""
    from peftlab.lab.protocols import apply_protocol

    return apply_protocol(args)[0]


@dataclass(frozen=True)
class SweepFile:
    """What a sweep file may hold; every field's annotation is the JSON type it must have."""

    name: str
    tasks: list[str]
    variants: dict[str, dict[str, Any]]
    description: str = ""
    protocol: str | None = "quick"
    seeds: list[int] = field(default_factory=lambda: [42])
    offline: bool = True
    layers: list[int] | None = None
    bottleneck_dims: list[int] | None = None
    poolings: list[str] | None = None
    common: dict[str, Any] = field(default_factory=dict)
    task_args: dict[str, dict[str, Any]] = field(default_factory=dict)


MERGED = ("common", "task_args", "variants")
"""The keys an extending sweep file merges into its base's, entry by entry (the others it replaces)."""


def extend_sweep(sweep: dict[str, Any], base: dict[str, Any], source: str = "Sweep file") -> dict[str, Any]:
    """``sweep`` laid over ``base`` (a sweep file with ``"extends"``): its keys replace the base's, except that
    ``common`` gains its entries, and each of ``variants`` and ``task_args`` gains its options (a variant or task the
    base lacks is added whole). It must have its own ``name``, so its runs never mix with the base's, and its own
    ``description`` or none (the base's would describe another sweep)."""
    if not isinstance(sweep.get("name"), str) or sweep["name"] == base["name"]:
        raise ConfigError(
            f"{source} extends the sweep {base['name']!r} and needs a 'name' of its own (its runs go to "
            f"--root/<name>/, apart from the base's), not {sweep.get('name')!r}."
        )
    merged = {key: value for key, value in base.items() if key != "description"}
    for key, value in sweep.items():
        if key not in MERGED or not isinstance(value, dict) or not isinstance(base.get(key), dict):
            merged[key] = value
        elif key == "common":
            merged[key] = base[key] | value
        else:
            merged[key] = dict(base[key])
            for name, entry in value.items():
                known = isinstance(entry, dict) and isinstance(base[key].get(name), dict)
                merged[key][name] = base[key][name] | entry if known else entry
    return merged


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SweepFile)}


def check_sweep(sweep: Any, source: str = "Sweep file") -> SweepFile:
    """``sweep`` (a sweep file's JSON object) checked against :class:`SweepFile`; returns it as one."""
    if not isinstance(sweep, dict):
        raise ConfigError(f"{source} must hold a JSON object with name, tasks and variants.")
    fields, hints = _fields(), typing.get_type_hints(SweepFile)
    for key in sweep:
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown key {key!r}{did_you_mean(key, fields)}; valid keys: {', '.join(fields)}."
            )
    missing = [k for k, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and k not in sweep]  # fmt: skip
    if missing:
        raise ConfigError(f"{source} has no {', '.join(map(repr, missing))}; a sweep needs name, tasks and variants.")
    for key, value in sweep.items():
        if not fits(hints[key], value):
            raise ConfigError(f"{source}: {key!r} is {value!r}, expected {type_name(hints[key])}.")
    checked = SweepFile(**sweep)
    _check_names(checked, source)
    _check_axes(checked, source)
    _check_options(checked, source)
    return checked


def _check_names(sweep: SweepFile, source: str) -> None:
    from peftlab.glue.tasks import TASKS

    def safe(what: str, name: str) -> None:
        if not SAFE_NAME.fullmatch(name):
            raise ConfigError(
                f"{source}: {what} {name!r} is not a plain folder name (letters, digits, '_', '-', '.', not starting "
                "with '.'): the sweep's runs are written under --root/<name>/<task>/<variant> and nowhere else."
            )

    safe("the name", sweep.name)
    if not sweep.tasks:
        raise ConfigError(f"{source}: 'tasks' is empty; give at least one of {', '.join(TASKS)}.")
    for task in sweep.tasks:
        if task not in TASKS:
            raise ConfigError(f"{source}: task {task!r} is not a GLUE task{did_you_mean(task, TASKS)}; valid: {', '.join(TASKS)}.")  # fmt: skip
    if not sweep.variants:
        raise ConfigError(f"{source}: 'variants' is empty; give at least one, e.g. {{\"adapter\": {{\"method\": \"adapter@2\"}}}}.")  # fmt: skip
    for variant in sweep.variants:
        safe("the variant name", variant)
    for task in sweep.task_args:
        if task not in sweep.tasks:
            raise ConfigError(f"{source}: task_args names {task!r}, which is not among its tasks ({', '.join(sweep.tasks)}).")  # fmt: skip


def _check_axes(sweep: SweepFile, source: str) -> None:
    from peftlab.modeling import POOLINGS

    for key in ("tasks", "seeds", "layers", "bottleneck_dims", "poolings"):
        values = getattr(sweep, key) or []
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"{source}: {key!r} repeats {', '.join(repeated)}: each value is one grid point, given once.")  # fmt: skip
    for key, low in (("seeds", 0), ("layers", 0), ("bottleneck_dims", 1)):
        bad = [v for v in getattr(sweep, key) or [] if v < low or (key == "seeds" and v >= 2**32)]
        if bad:
            valid = "whole numbers from 0 to 2**32 - 1" if key == "seeds" else f"whole numbers >= {low}"
            raise ConfigError(f"{source}: {key!r} holds {bad[0]}; valid: {valid}.")
    for pooling in sweep.poolings or []:
        if pooling not in POOLINGS:
            raise ConfigError(f"{source}: pooling {pooling!r} is not valid; choose from {', '.join(POOLINGS)}.")
    for variant, options in sweep.variants.items():
        for flag, axis in PER_AXIS.items():
            if flag in options and not isinstance(options[flag], bool):
                raise ConfigError(f"{source}: variant {variant!r}: {flag!r} is {options[flag]!r}, expected true or false.")  # fmt: skip
            if options.get(flag) and not getattr(sweep, axis):
                raise ConfigError(f"{source}: variant {variant!r} has {flag} but the sweep has no {axis!r} to run it over.")  # fmt: skip


def _check_options(sweep: SweepFile, source: str) -> None:
    where = {"common": sweep.common, **{f"task_args.{t}": a for t, a in sweep.task_args.items()}}
    where.update({f"variant {v!r}": o for v, o in sweep.variants.items()})
    for place, options in where.items():
        for key in SET_BY_THE_SWEEP:
            if key in options:
                raise ConfigError(
                    f"{source}: {place} sets {key!r}, which the sweep sets on every run itself (output_dir from "
                    "--root and the grid, task_name from 'tasks', seed from 'seeds'); remove it."
                )
        if "method" in options and not place.startswith("variant"):
            raise ConfigError(f"{source}: {place} sets 'method'; each variant names its own method.")
    for variant, options in sweep.variants.items():
        if not isinstance(options.get("method"), str) or not options["method"].strip():
            raise ConfigError(f"{source}: variant {variant!r} needs a 'method' string, e.g. \"adapter@2\".")


def check_paths(runs: list, root: str | Path, source: str = "Sweep file") -> None:
    """Every run's folder inside ``root`` (the sweep's folder under ``--root``), and no two runs in one folder."""
    inside = Path(root).resolve()
    seen: dict[Path, str] = {}
    for run in runs:
        folder = run.output_dir.resolve()
        if inside != folder and inside not in folder.parents:
            raise ConfigError(f"{source}: run {run.name!r} would write {folder}, outside the sweep's folder {inside}.")
        if folder in seen:
            raise ConfigError(f"{source}: runs {seen[folder]!r} and {run.name!r} are one grid point ({folder}); give each point once.")  # fmt: skip
        seen[folder] = run.name


def check_runs(runs: list, source: str = "Sweep file") -> None:
    """Parse every run's arguments with ``run_glue.py``'s parser (no data or model is loaded): a bad option in a
    variant is one line naming the file, the variant and the key, before the first job starts."""
    from peftlab.lab.parsing import parse_args

    for run in runs:
        try:
            parse_args(dict(run.args))
        except ConfigError as err:
            message = str(err).split(": ", 1)[-1] if str(err).startswith("The arguments of run") else str(err)
            raise ConfigError(
                f"{source}, variant {run.point['variant']!r} (run {run.name}, task {run.point['task']}): {message}"
            ) from None


DEFAULTS: dict[str, Any] = {
    "logging_steps": 50,
    "disable_tqdm": True,
    "do_train": True,
    "do_eval": True,
    "overwrite_output_dir": True,
    "save_model": False,
    "resumable": True,
}
"""What every sweep run has besides its protocol: scores only (no weights written), progress in the log, and a
checkpoint at every evaluation and every ``--resumable_minutes``, so that a run stopped with its sweep resumes from
its last checkpoint."""
OFFLINE_PROTOCOL: dict[str, dict[str, Any]] = {
    "mnli": {"train_split": "validation_mismatched"},
    "qqp": {"train_split": "validation", "split_dev": 0.25},
    "qnli": {"train_split": "validation", "split_dev": 0.25},
}
"""Training protocols for the tasks whose train file is not available offline (see the README)."""


def run_args(task: str, method: str, seed: int = 42, protocol: str | None = "quick", offline: bool = True) -> dict:
    """The arguments of one run before the sweep's own: :data:`DEFAULTS`, the protocol preset's name (each run
    applies it) and, with ``offline``, the task's offline protocol. Sweeps and ``scripts/glue.sh`` start here."""
    args = {**DEFAULTS, **({"protocol": protocol} if protocol else {})}
    args.update(OFFLINE_PROTOCOL.get(task, {}) if offline else {})
    return {**args, "task_name": task, "method": method, "seed": seed}


def as_flags(args: dict[str, Any]) -> list[str]:
    """``run_glue.py`` command-line flags for ``args`` (booleans spelt out: some flags require a value)."""
    return [part for key, value in args.items() if value is not None for part in (f"--{key}", str(value))]


def _fill(value: Any, layer: int | None) -> Any:
    """Put the grid's layer into ``{layer}``/``{next_layer}`` (a bare placeholder becomes an int)."""
    if not isinstance(value, str) or layer is None:
        return value
    if value in ("{layer}", "{next_layer}"):
        return layer if value == "{layer}" else layer + 1
    return value.replace("{layer}", str(layer)).replace("{next_layer}", str(layer + 1))


def expand(sweep: dict[str, Any], root: str | os.PathLike, source: str = "Sweep file") -> list[Run]:
    """All runs of ``sweep`` under ``root/<name>``, in a fixed order: seed outermost, so that a sweep stopped
    part-way has whole tables for its first seeds rather than many seeds of its first tasks. The file is checked
    whole first (:func:`peftlab.lab.sweepfile.check_sweep`): a bad key, type, name or repeated point is refused here."""
    s = check_sweep(sweep, source)
    runs = []
    for seed, task, (variant, spec) in itertools.product(s.seeds, s.tasks, s.variants.items()):
        layers = s.layers if spec.get("per_layer") else [None]
        dims = s.bottleneck_dims if spec.get("per_bottleneck") else [None]
        poolings = s.poolings if spec.get("per_pooling") else [None]
        for layer, dim, pooling in itertools.product(layers, dims, poolings):
            method = spec["method"]
            if layer is not None and "@" not in method:
                method = f"{method}@{layer}"
            method = _fill(method, layer)
            options = {k: _fill(v, layer) for k, v in spec.items() if k != "method" and k not in PER_AXIS}
            args = run_args(task, method, seed, s.protocol, s.offline)  # offline false: every task's own train split
            args.update(s.common)
            args.update(s.task_args.get(task, {}))
            args.update(options)
            if dim is not None:
                args["bottleneck_dim"] = dim
            if pooling is not None:
                args["pooling"] = pooling
            label = variant if pooling is None else f"{variant}_{pooling}"  # one table row per pooling
            parts = (
                [task, label] + ([f"L{layer}"] if layer is not None else []) + ([f"bn{dim}"] if dim is not None else [])
            )
            name = "/".join([*parts, f"seed{seed}"])
            args["output_dir"] = str(Path(root) / s.name / name)
            point = {
                "sweep": s.name,
                "task": task,
                "variant": label,
                "layer": layer,
                "bottleneck_dim": dim,
                "seed": seed,
            }
            runs.append(Run(name=name, point=point, args=args))
    check_paths(runs, Path(root) / s.name, source)
    return runs
