"""Sweeps: a grid of runs described in one JSON file, run one after another, resumable, never overwriting.

A sweep file looks like::

    {
      "name": "layer_sweep_mrpc",
      "tasks": ["mrpc"],
      "seeds": [42],
      "layers": [0, 1, 2, 3, 4, 5],
      "variants": {
        "adapter_ffn": {"method": "adapter", "per_layer": true, "placement": "ffn", "bottleneck_dim": 2},
        "raw_mean": {"method": "probe", "pooling": "mean"},
        "finetune": {"method": "full"}
      },
      "common": {"pooling": "mean", "num_train_epochs": 3},
      "task_args": {"sst2": {"num_train_epochs": 1}}
    }

Axes: seed x task x variant x layer (``layers``, variants with ``per_layer``) x bottleneck (``bottleneck_dims``,
variants with ``per_bottleneck``) x pooling (``poolings``, variants with ``per_pooling``; such a variant becomes
one row per pooling, named ``<variant>_<pooling>``). A variant's ``method`` gets ``@<layer>`` when it is per layer; ``{layer}`` and
``{next_layer}`` inside any string option are filled in (for strategies such as ``adapter@{layer},{next_layer}``).
Arguments are merged in the order: :data:`DEFAULTS`, the task's offline protocol, ``common``, ``task_args``,
the variant, the grid values. Each run's arguments are saved as ``args.json`` beside its results together with
``sweep_point.json`` (the grid coordinates), so the collector needs nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError
from peftlab.io import write_json

DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 32,
    "warmup_ratio": 0.06,
    "weight_decay": 0.1,
    "max_seq_length": 128,
    "logging_steps": 50,
    "disable_tqdm": True,
    "do_train": True,
    "do_eval": True,
    "overwrite_output_dir": True,
}
FULL_LR, PEFT_LR = 5e-5, 2e-3
OFFLINE_PROTOCOL: dict[str, dict[str, Any]] = {
    "mnli": {"train_split": "validation_mismatched"},
    "qqp": {"train_split": "validation", "split_dev": 0.25},
    "qnli": {"train_split": "validation", "split_dev": 0.25},
}
"""Training protocols for the tasks whose train file is not available offline (see the README)."""

RESULTS = "all_results.json"
REUSED = "reused_from.txt"
COPIED_WHEN_REUSED = (RESULTS, "run_config.json", "trainer_state.json")


def run_args(task: str, method: str, seed: int = 42, protocol: bool = True) -> dict[str, Any]:
    """The defaults of one run: :data:`DEFAULTS`, the learning rate for ``method`` (full fine-tuning or a frozen
    backbone) and, with ``protocol``, the task's offline protocol. Sweeps and ``scripts/glue.sh`` both start here."""
    lr = FULL_LR if method.split("@")[0] == "full" else PEFT_LR
    args = {**DEFAULTS, "learning_rate": lr, "head_learning_rate": lr}
    args.update(OFFLINE_PROTOCOL.get(task, {}) if protocol else {})
    return {**args, "task_name": task, "method": method, "seed": seed}


def as_flags(args: dict[str, Any]) -> list[str]:
    """``run_glue.py`` command-line flags for ``args`` (booleans spelt out: some flags require a value)."""
    return [part for key, value in args.items() if value is not None for part in (f"--{key}", str(value))]


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


def _fill(value: Any, layer: int | None) -> Any:
    """Put the grid's layer into ``{layer}``/``{next_layer}`` (a bare placeholder becomes an int)."""
    if not isinstance(value, str) or layer is None:
        return value
    if value in ("{layer}", "{next_layer}"):
        return layer if value == "{layer}" else layer + 1
    return value.replace("{layer}", str(layer)).replace("{next_layer}", str(layer + 1))


def expand(sweep: dict[str, Any], root: str | os.PathLike) -> list[Run]:
    """All runs of ``sweep`` under ``root/<name>``, in a fixed order: seed outermost, so that a sweep stopped
    part-way has whole tables for its first seeds rather than many seeds of its first tasks."""
    for key in ("name", "tasks", "variants"):
        if key not in sweep:
            raise ConfigError(f"Sweep file has no {key!r}; it needs name, tasks and variants.")
    runs = []
    seeds = sweep.get("seeds", [42])
    for seed, task, (variant, spec) in itertools.product(seeds, sweep["tasks"], sweep["variants"].items()):
        layers = sweep.get("layers", [None]) if spec.get("per_layer") else [None]
        dims = sweep.get("bottleneck_dims", [None]) if spec.get("per_bottleneck") else [None]
        poolings = sweep.get("poolings", [None]) if spec.get("per_pooling") else [None]
        for layer, dim, pooling in itertools.product(layers, dims, poolings):
            method = spec["method"]
            if layer is not None and "@" not in method:
                method = f"{method}@{layer}"
            method = _fill(method, layer)
            options = {
                k: _fill(v, layer)
                for k, v in spec.items()
                if k not in ("method", "per_layer", "per_bottleneck", "per_pooling")
            }
            args = run_args(task, method, seed)
            args.update(sweep.get("common", {}))
            args.update(sweep.get("task_args", {}).get(task, {}))
            args.update(options)
            args.update({"task_name": task, "method": method, "seed": seed})  # no option overrides these
            if dim is not None:
                args["bottleneck_dim"] = dim
            if pooling is not None:
                args["pooling"] = pooling
            label = variant if pooling is None else f"{variant}_{pooling}"  # one table row per pooling
            parts = (
                [task, label] + ([f"L{layer}"] if layer is not None else []) + ([f"bn{dim}"] if dim is not None else [])
            )
            name = "/".join([*parts, f"seed{seed}"])
            args["output_dir"] = str(Path(root) / sweep["name"] / name)
            point = {
                "sweep": sweep["name"],
                "task": task,
                "variant": label,
                "layer": layer,
                "bottleneck_dim": dim,
                "seed": seed,
            }
            runs.append(Run(name=name, point=point, args=args))
    return runs


# The cost model of ``--dry_run``, in CPU core-seconds (a run on one core for 10 s costs 10; on two cores for 6 s,
# 12). "overhead" is per run (start-up, model load, tokenizing, writing); the others are per example at
# REFERENCE_TOKENS tokens: "forward" one no-grad pass of the whole backbone (evaluation, or filling the
# frozen-prefix cache), "read" reading it back from the cache, "full" one training pass with everything trainable,
# "frozen" one through the layers above the cache (scaled by their share of the backbone). Every per-example cost
# grows with the tokens (batches are grouped by length, so there is little padding; a fixed share per example fits
# the measured runs worse). Fitted by least squares to measured runs of the bundled MiniLM:
#     python scripts/estimate_check.py runs/sweeps --fit
COST = {"overhead": 8.62, "forward": 0.0299, "read": 0.000321, "full": 0.0561, "frozen": 0.0344}
REFERENCE_TOKENS = 60
TOKENS_PER_WORD = 1.2
"""Word-piece tokens per whitespace word in GLUE text (measured with the bundled tokenizer: 1.15 to 1.25)."""


@dataclass(frozen=True)
class Workload:
    """What a run's CPU time depends on in its data: examples trained on and evaluated, and tokens per example."""

    train: int
    eval: int
    tokens: float


def workload(run: Run, glue_dir: str | os.PathLike) -> Workload:
    """The :class:`Workload` of ``run``, read from its data (token counts estimated from word counts)."""
    return _workload(
        run.args["task_name"], str(glue_dir), run.args.get("train_split", "train"), run.args.get("split_dev"),
        run.args.get("max_train_samples"), run.args.get("max_eval_samples"), int(run.args.get("max_seq_length", 128)),
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


def cache_key(run: Run, num_layers: int = 6) -> tuple | None:
    """What the frozen-prefix cache of ``run`` depends on (``None`` without the cache): runs with one key share it.
    The lowest trained layer is the second element; a probe caches its pooled features (key ends with the pooling)."""
    from peftlab.architectures import parse_layers  # import torch: only when estimating
    from peftlab.methods.base import parse_method_string

    methods = parse_method_string(run.args["method"])
    if not run.args.get("cache_frozen_prefix") or any(name == "full" for name, _ in methods):
        return None
    trained = [
        layer
        for name, layers in methods
        if name != "probe"
        for layer in parse_layers(layers or run.args.get("target_layers", "all"), num_layers)
    ]
    data = tuple(
        run.args.get(k) for k in ("task_name", "train_split", "split_dev", "max_train_samples", "max_seq_length")
    )
    return (data, min(trained), None) if trained else (data, num_layers, run.args.get("pooling"))


def cost_terms(run: Run, load: Workload, fills_cache: bool = True, num_layers: int = 6) -> dict[str, float]:
    """How many of each :data:`COST` unit ``run`` spends: its estimate is ``sum(terms[k] * COST[k])``.

    ``fills_cache``: whether this run computes its frozen-prefix cache (the first run of a sweep with that
    :func:`cache_key` does; later ones read it from disk)."""
    length = load.tokens / REFERENCE_TOKENS
    examples = load.train * float(run.args.get("num_train_epochs", 3))
    kind = "full" if run.args["method"].split("@")[0] == "full" else "frozen"
    terms = dict.fromkeys(COST, 0.0)
    terms["overhead"] = 1.0
    key = cache_key(run, num_layers)
    if key is None:
        terms[kind] = examples * length
        terms["forward"] = load.eval * length
        return terms
    above = (num_layers - key[1]) / num_layers  # only the layers from the lowest trained one up run
    terms["frozen"] = above * examples * length
    terms["forward"] = ((load.train + load.eval) * fills_cache + above * load.eval) * length
    terms["read"] = (load.train + load.eval) * length
    return terms


def estimate_seconds(run: Run, load: Workload, fills_cache: bool = True, num_layers: int = 6) -> float:
    """A rough CPU-time estimate of ``run`` in core-seconds, for planning (``--dry_run``); see :data:`COST`."""
    return sum(n * COST[unit] for unit, n in cost_terms(run, load, fills_cache, num_layers).items())


LOCK = ".running"


def _claim(run: Run) -> bool:
    """Take ``run`` for this process: create its lock file, or take over a lock whose process on this host died.

    The lock lets several sweep processes (on one machine, or on machines sharing the runs folder) work through
    the same sweep side by side without starting the same run twice.
    """
    run.output_dir.mkdir(parents=True, exist_ok=True)
    lock = run.output_dir / LOCK
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_held(lock):
                return False
            lock.unlink(missing_ok=True)  # its process is gone: the run was interrupted
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        return True
    return False


def _lock_held(lock: Path) -> bool:
    """Whether ``lock`` exists and its owner may still be running (alive here, or on another host)."""
    try:
        host, _, pid = lock.read_text().partition(" ")
    except FileNotFoundError:
        return False
    return host != socket.gethostname() or not pid.strip().isdigit() or _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.cache
def _argument_defaults() -> dict[str, Any]:
    from peftlab.run import ARGUMENT_CLASSES  # imports transformers: only when needed

    defaults: dict[str, Any] = {}
    for cls in ARGUMENT_CLASSES:
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                defaults.setdefault(field.name, field.default)
    return defaults


def fingerprint(args: dict[str, Any]) -> str:
    """What makes two runs the same run: every argument but where it is written, with arguments equal to their
    default left out (``placement: ffn`` and no placement are one run) and numbers compared as numbers."""
    defaults = _argument_defaults()

    def is_default(key: str, value: Any) -> bool:
        if key not in defaults:
            return False
        default = defaults[key]
        return value == default or value == getattr(default, "value", object())

    def number(value: Any) -> Any:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    kept = {k: number(v) for k, v in args.items() if k != "output_dir" and not is_default(k, v)}
    return json.dumps(kept, sort_keys=True)


def finished_runs(root: str | os.PathLike) -> dict[str, Path]:
    """Finished runs under ``root`` (every sweep) made by this runner themselves (not reused), by fingerprint."""
    return twins(root)[0]


def twins(
    root: str | os.PathLike, exclude: Path | None = None
) -> tuple[dict[str, Path], dict[str, list[tuple[int, Path]]]]:
    """Runs under ``root`` by fingerprint: those finished by a run of their own (not reused), and those running
    now (locked by a live process), with the time their lock was taken."""
    done: dict[str, Path] = {}
    running: dict[str, list[tuple[int, Path]]] = {}
    for args_path in sorted(Path(root).rglob("args.json")):
        folder = args_path.parent
        if exclude is not None and folder.resolve() == exclude.resolve():
            continue
        # Locked means running, results or not: its process may still be writing (the lock goes when it exits).
        if _lock_held(folder / LOCK):
            try:
                taken = (folder / LOCK).stat().st_mtime_ns
                running.setdefault(fingerprint(json.loads(args_path.read_text())), []).append((taken, folder))
                continue
            except FileNotFoundError:  # it finished in the meantime
                pass
        if (folder / RESULTS).is_file() and not (folder / REUSED).is_file():
            done.setdefault(fingerprint(json.loads(args_path.read_text())), folder)
    return done, running


def reuse(run: Run, source: Path) -> None:
    """Fill ``run`` with the results of the identical finished run ``source`` (no weights), and say so."""
    run.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(run.output_dir / "args.json", run.args)
    write_json(run.output_dir / "sweep_point.json", run.point)
    (run.output_dir / REUSED).write_text(f"{source}\n")
    for name in COPIED_WHEN_REUSED[::-1]:  # the results file last: it is what marks the run finished
        if (source / name).is_file():
            shutil.copyfile(source / name, run.output_dir / f".{name}.tmp")
            os.replace(run.output_dir / f".{name}.tmp", run.output_dir / name)


def run_all(
    runs: list[Run], *, python: str = sys.executable, log=print, workers: int = 1, reuse_root: str | None = None
) -> list[Run]:
    """Run the unfinished runs, ``workers`` at a time; returns those that failed.

    With ``reuse_root``, a run whose arguments (all but ``output_dir``) equal those of a run already finished
    anywhere under that folder is not run again: its results are copied in, with ``reused_from.txt`` naming the
    source (sweeps overlap: Table 1's MRPC rows are points of the MRPC layer sweep). A run whose identical twin
    is running now (in this or another sweep process) waits for it, after the other runs have started. So does,
    with several workers, a run whose frozen-prefix cache (:func:`cache_key`) a running run is computing: started
    side by side, both would compute it; started after, it reads it from disk.

    With several workers each run gets ``OMP_NUM_THREADS = cores // workers`` (unless the variable is set): on the
    2-core CPU, two single-thread runs side by side train about 20 % more steps per second than one two-thread run
    (scripts/bench.py numbers in the README). Runs locked by another live sweep process are skipped.
    """
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}.")
    entry = Path(__file__).resolve().parents[1] / "run_glue.py"
    env = dict(os.environ)
    if workers > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
    failed: list[Run] = []
    active: list[tuple[Run, subprocess.Popen, float, Any]] = []

    def reap() -> None:
        for item in [item for item in active if item[1].poll() is not None]:
            active.remove(item)
            run, proc, start, handle = item
            handle.close()
            (run.output_dir / LOCK).unlink(missing_ok=True)
            if proc.returncode != 0 or not run.finished:
                failed.append(run)
                log(f"    FAILED {run.name} (exit {proc.returncode}); see {run.output_dir / 'log.txt'}")
            else:
                seconds = time.time() - start
                (run.output_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
                (run.output_dir / "threads.txt").write_text(f"{env.get('OMP_NUM_THREADS', os.cpu_count())}\n")
                log(f"    finished {run.name} in {seconds:.0f} s")

    def wait_below(limit: int) -> None:
        reap()
        while len(active) >= limit:
            time.sleep(0.2)
            reap()

    waiting: set[tuple[str, str]] = set()  # (run, what it waits for): each wait is logged once

    def later(tag: str, run: Run, cause: str, why: str) -> bool:
        """Leave ``run`` for later (False, for :func:`attempt`), saying why the first time."""
        if (run.name, cause) not in waiting:
            waiting.add((run.name, cause))
            log(f"{tag} later {run.name}: {why}")
        return False

    keys: dict[str, tuple | None] = {}

    def shared_cache(run: Run) -> tuple | None:
        if run.name not in keys:
            keys[run.name] = cache_key(run)
        return keys[run.name]

    def filling(run: Run) -> str | None:
        """The running run that is computing the frozen-prefix cache ``run`` would read, if any (a cache is on disk
        once a run of the sweep that uses it has finished; with one worker nothing runs beside ``run``)."""
        key = shared_cache(run) if workers > 1 else None
        if key is None or any(other.finished for other in runs if shared_cache(other) == key):
            return None
        return next((other.name for other, *_ in active if shared_cache(other) == key), None)

    def attempt(index: int, run: Run) -> bool:
        """Skip, reuse or start ``run``; False when an identical run is in progress (try again later)."""
        tag = f"[{index}/{len(runs)}]"
        if run.finished:
            log(f"{tag} skip {run.name} (finished)")
            return True
        wait_below(workers)
        if (other := filling(run)) is not None:
            return later(tag, run, other, f"{other} is computing the frozen-prefix cache it reads")
        if not _claim(run):
            log(f"{tag} skip {run.name} (running in another sweep process)")
            return True
        if run.finished:  # another sweep process finished it while this one waited for a slot
            (run.output_dir / LOCK).unlink(missing_ok=True)
            log(f"{tag} skip {run.name} (finished)")
            return True
        write_json(run.output_dir / "args.json", run.args)
        write_json(run.output_dir / "sweep_point.json", run.point)
        if reuse_root is not None:
            done, running = twins(reuse_root, exclude=run.output_dir)
            key = fingerprint(run.args)
            if key in done:
                reuse(run, done[key])
                (run.output_dir / LOCK).unlink(missing_ok=True)
                log(f"{tag} reuse {run.name}: identical to the finished {done[key]}")
                return True
            mine = ((run.output_dir / LOCK).stat().st_mtime_ns, str(run.output_dir))
            earlier = [folder for taken, folder in running.get(key, []) if (taken, str(folder)) < mine]
            if earlier:  # the twin that took its lock first runs; this one takes its results
                (run.output_dir / LOCK).unlink(missing_ok=True)
                return later(tag, run, str(earlier[0]), f"the identical {earlier[0]} is running; its results will do")
        log(f"{tag} run {run.name}")
        handle = open(run.output_dir / "log.txt", "w")
        proc = subprocess.Popen(
            [python, str(entry), str(run.output_dir / "args.json")], stdout=handle, stderr=subprocess.STDOUT, env=env
        )
        active.append((run, proc, time.time(), handle))
        return True

    try:
        deferred = [(index, run) for index, run in enumerate(runs, start=1) if not attempt(index, run)]
        while deferred:  # runs waiting for a twin's results or for a cache: try again as runs finish
            time.sleep(2)
            reap()
            deferred = [(index, run) for index, run in deferred if not attempt(index, run)]
        wait_below(1)
    finally:
        for run, proc, _, handle in active:  # interrupted: stop the children, free their runs
            proc.terminate()
            proc.wait()
            handle.close()
            (run.output_dir / LOCK).unlink(missing_ok=True)
    return failed


def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"Cannot read sweep file {path}: {err}") from None


if __name__ == "__main__":  # python -m peftlab.sweep TASK METHOD [--no_protocol]: the defaults, one flag a line
    import argparse

    parser = argparse.ArgumentParser(description="Print run_glue.py's default flags for one run (scripts/glue.sh).")
    parser.add_argument("task")
    parser.add_argument("method")
    parser.add_argument("--no_protocol", action="store_true", help="leave out the task's offline protocol")
    cli = parser.parse_args()
    print("\n".join(as_flags(run_args(cli.task, cli.method, protocol=not cli.no_protocol))))
