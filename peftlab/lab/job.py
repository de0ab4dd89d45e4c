"""``python -m peftlab.lab.job JOB.json``: the runs of one sweep job, in this process (see :mod:`peftlab.lab.sweep`).

A job file holds ``{"fill": bool, "runs": [{"args": {...}, "point": {...}}, ...]}``. A fill job computes every
frozen-prefix cache its runs read (one pass per split) and trains nothing; any other job trains its runs one after
another, sharing data, model and caches (:func:`peftlab.lab.run.run_many`), each writing ``args.json`` and
``sweep_point.json`` into its own folder. A run found finished when its folder's lock is taken (another process
finished it meanwhile) is left as it is; one whose folder another process holds is left to it (``locked``, not a
failure: two drivers on one root share the work). The job's summary (wall time, threads, outcome of each run) is written
beside the job file as ``<job>.result.json``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import torch

from peftlab.io import OutputLocked, write_json
from peftlab.lab.run import fill_caches, run_many

LOCKED = "locked by another process"


def outcome(result) -> dict[str, str]:
    """What became of one run: finished, skipped (finished meanwhile), locked (another process is training it:
    not a failure) or failed, with the error's one line."""
    if isinstance(result, str):
        return {"outcome": result}
    if isinstance(result, OutputLocked):
        return {"outcome": LOCKED}
    if isinstance(result, BaseException):
        return {"outcome": "failed", "error": f"{type(result).__name__}: {result}".splitlines()[0]}
    return {"outcome": "finished"}


def main(path: str) -> int:
    job = json.loads(Path(path).read_text())
    entries = [run["args"] for run in job["runs"]]
    start, cpu_start = time.time(), time.process_time()
    passes = None
    try:
        if job["fill"]:
            passes = fill_caches(entries)
            outcomes = ["filled"] * len(entries)
        else:
            records = [{"args.json": run["args"], "sweep_point.json": run["point"]} for run in job["runs"]]
            outcomes = run_many(entries, records=records, keep_going=True, skip_finished=True)
    except Exception as err:  # the job as a whole (a fill) failed: every run says why, the traceback is in the log
        traceback.print_exc()
        outcomes = [err] * len(entries)

    summary = {
        "fill": job["fill"],
        **({"fill_passes": passes} if passes is not None else {}),
        "wall_seconds": round(time.time() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "threads": torch.get_num_threads(),
        "runs": [{"output_dir": run["args"]["output_dir"], **outcome(o)} for run, o in zip(job["runs"], outcomes)],
    }
    write_json(Path(path).with_suffix(".result.json"), summary)
    return 1 if any(r["outcome"] == "failed" for r in summary["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
