"""The GLUE runs behind ``run_glue.py``: check everything, load data and model, train, evaluate, predict, save.

One process can do many runs (``run_glue.py a.json b.json ...``, which is how sweeps run). They share a
:class:`Workspace`: each dataset is read and tokenized once, each pretrained model loaded once (every run trains
its own copy), and the frozen-prefix caches of all the runs are filled in one pass per split and then kept in
memory. A run's results, folder and ``run_config.json`` are those it would have alone, and its metrics are
bit-identical to running it alone: a single run is the same code with a workspace of its own.

:func:`run_many` checks every run before any of them loads a model (:func:`prepare`), then runs them one after
another (:func:`execute`). Each stage is a function so it can be tested on its own.
"""

from __future__ import annotations

import gc
import logging
import sys
from contextlib import nullcontext
from typing import Any

from peftlab.errors import ConfigError, PeftlabError
from peftlab.io import output_lock, run_log, setup_logging, write_history, write_json
from peftlab.lab.checks import prepare
from peftlab.lab.parsing import Plan, RunSpec, parse_args
from peftlab.lab.record import RESULTS_NAME
from peftlab.lab.stages import execute
from peftlab.lab.workspace import Workspace

logger = logging.getLogger("peftlab")


def prepare_all(ws: Workspace, argvs: list[list[str] | dict[str, Any]], keep_going: bool = False) -> list[Any]:
    """Parse and check every run (nothing loaded but data, configs and tokenizers) and plan the caches they read;
    returns each run's :class:`~peftlab.lab.parsing.Plan`. With ``keep_going`` a run that fails its checks gives
    its exception in its place and the others go on."""
    specs: list[Any] = []
    for argv in argvs:
        try:
            specs.append(parse_args(argv))
        except PeftlabError as err:
            if not keep_going:
                raise
            specs.append(err)
    ok = [spec for spec in specs if isinstance(spec, RunSpec)]
    if ok:
        setup_logging(ok[0].training_args)
    folders = [spec.output_dir.resolve() for spec in ok]
    twice = sorted({str(f) for f in folders if folders.count(f) > 1})
    if twice:
        raise ConfigError(f"Several runs write the same --output_dir: {', '.join(twice)}. Give each its own.")
    for index, spec in enumerate(specs):
        if not isinstance(spec, RunSpec):
            continue
        try:
            plan = prepare(ws, spec)
        except PeftlabError as err:
            if not keep_going:
                raise
            logger.error("Run %s is refused: %s", spec.output_dir, err)
            specs[index] = err
            continue
        specs[index] = plan
        if plan.cache_need is not None:
            ws.cache(plan).plan(plan.cache_need)
    return specs


def run_many(
    argvs: list[list[str] | dict[str, Any]],
    ws: Workspace | None = None,
    *,
    keep_going: bool = False,
    records: list[dict[str, Any]] | None = None,
    skip_finished: bool = False,
) -> list[Any]:
    """Check every run, then run them one after another in this process, sharing a :class:`Workspace`.

    Returns each run's results. With ``keep_going`` a run that fails (or whose folder another process holds) gives
    its exception in its place and the others still run; without it the first failure is raised. ``records``: per
    run, JSON files to write into its folder once it holds the folder's lock. With ``skip_finished``, a run whose
    results exist when it takes the lock is left as it is (``"skipped"``).
    """
    ws = ws or Workspace()
    specs = prepare_all(ws, argvs, keep_going)  # 1. every check, before any model is loaded or anything is written
    gc.freeze()  # what is loaded now lives as long as the process: the Trainer's gc.collect() need not walk it
    outcomes: list[Any] = []
    for index, spec in enumerate(specs):  # 2. the runs
        if not isinstance(spec, Plan):  # refused by its checks (keep_going)
            outcomes.append(spec)
            continue
        if len(specs) > 1:
            logger.info("Run %d of %d: %s", index + 1, len(specs), spec.output_dir)
        first = spec.training_args.process_index == 0  # under torchrun, the first process writes the folder
        try:
            with output_lock(spec.output_dir) if first else nullcontext():
                if skip_finished and (spec.output_dir / RESULTS_NAME).is_file():
                    logger.info("%s is finished (by another process meanwhile): left as it is.", spec.output_dir)
                    outcomes.append("skipped")
                    continue
                with run_log(spec.output_dir) if first else nullcontext():
                    if first:
                        for name, content in (records[index] if records else {}).items():
                            write_json(spec.output_dir / name, content)
                        write_history(spec.output_dir, "start")
                    outcomes.append(execute(ws, spec))
                    if first:
                        write_history(spec.output_dir, "finish")
        except Exception as err:
            if not keep_going:
                gc.unfreeze()
                raise
            logger.exception("Run %s failed: %s", spec.output_dir, err)
            outcomes.append(err)
    gc.unfreeze()
    return outcomes


def fill_caches(argvs: list[list[str] | dict[str, Any]], ws: Workspace | None = None) -> int:
    """Compute (or find on disk) every frozen-prefix cache the runs read, in one pass per split, training nothing;
    returns the number of passes computed."""
    ws = ws or Workspace()
    for spec in prepare_all(ws, argvs):
        if spec.cache_need is None:
            continue
        features = ws.features(spec)
        tokenizer = ws.tokenizer(spec.tokenizer_path, spec.model_args)
        named = [features.train, *features.eval.values(), *(data for _, data in features.test.values())]
        for data in filter(None, named):
            ws.cache(spec).get(data, spec.cache_need, tokenizer)
    return ws.fill_passes()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one GLUE experiment and return its results (also written to ``all_results.json``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_many([argv])[0]


def cli(argv: list[str] | None = None) -> int:
    """``run_glue.py``: one run from flags or a JSON file, or several JSON files run in this process."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) > 1 and all(a.endswith(".json") for a in argv):
        outcomes = run_many([[a] for a in argv], keep_going=True)
        failed = [(a, o) for a, o in zip(argv, outcomes) if isinstance(o, BaseException)]
        for path, err in failed:
            print(f"error: {path}: {err}", file=sys.stderr)
        return 1 if failed else 0
    main(argv)
    return 0
