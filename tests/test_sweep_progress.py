"""A sweep's progress: the driver's lines as jobs report, ``peftlab sweep --status`` for a sweep running elsewhere,
and ``--set`` overrides for sweeps that try things in a root of their own."""

from __future__ import annotations

import json
import platform
import re
import signal
import subprocess
import time

import pytest
from conftest import REPO, write
from test_sweep_engine import small_sweep

from peftlab.errors import ConfigError
from peftlab.io import write_json
from peftlab.lab.commands.sweep import main, parse_overrides
from peftlab.lab.progress import Tracker, sweep_status
from peftlab.lab.sweep import plan_jobs, run_sweep, write_job_file
from peftlab.lab.sweepfile import JOBS, expand

LINE = re.compile(
    r"progress: (\d+) of (\d+) runs finished, (\d+) running, (?:(\d+) failed, )?(\d+) left; jobs: (\d+) of (\d+) ended"
)


def counts(line: str) -> tuple[int, ...]:
    """(finished, total, running, failed, left, jobs ended, jobs) of a progress line."""
    found = LINE.match(line)
    assert found, line
    return tuple(int(n or 0) for n in found.groups())


def test_the_driver_reports_progress_as_jobs_end_and_status_reads_it_back(tiny_bert, rte_dir, tmp_path, capsys):
    runs = expand(small_sweep(tiny_bert, rte_dir), tmp_path / "runs")
    root = tmp_path / "runs" / "s"
    log = []
    assert run_sweep(runs, root, workers=2, log=log.append, progress_every=0.5) == []
    lines = [line for line in log if line.startswith("progress:")]
    seen = [counts(line) for line in lines]
    for finished, total, running, failed, left, ended, jobs in seen:
        assert finished + running + failed + left == total == 6 and failed == 0 and ended <= jobs == 3
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)  # finished runs only grow
    assert lines[-1] == "progress: 6 of 6 runs finished, 0 running, 0 left; jobs: 3 of 3 ended"
    assert "ETA" in lines[0] and "nothing measured yet" in lines[0]  # the GLUE data is local: estimated
    assert len(lines) >= 1 + sum(line.startswith("end ") for line in log)  # one at the start, one per job's end
    assert log[-2] == lines[-1] and log[-1].startswith("3 jobs in ")
    status = sweep_status(root)
    assert status.startswith(lines[-1] + "; its driver ended at ")
    assert main(["--status", str(root)]) == 0  # the CLI, with the sweep's folder
    assert capsys.readouterr().out.startswith(lines[-1])


def test_status_of_a_sweep_running_elsewhere_reads_its_files_and_starts_nothing(rte_dir, tmp_path):
    sweep = {"name": "e", "tasks": ["rte"], "seeds": [1], "common": {"glue_dir": str(rte_dir)},
             "variants": {"a": {"method": "probe"}, "b": {"method": "bitfit"}, "c": {"method": "full"}}}  # fmt: skip
    runs = expand(sweep, tmp_path)
    root = tmp_path / "e"
    jobs = plan_jobs(runs, workers=2)
    assert [[r.point["variant"] for r in job.runs] for job in jobs] == [["a", "b"], ["c"]]
    for job in jobs:
        write_job_file(job, root)
    a, b, c = runs
    write_json(a.output_dir / "all_results.json", {"wall_seconds": 2.0, "threads": 1})  # finished inside its job
    host = platform.node()
    dead = subprocess.Popen(["true"])
    dead.wait()
    write(b.output_dir / "history.log", f"2020-01-01T00:00:00+0000 start pid={dead.pid} host={host}\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    line = sweep_status(root)  # no driver file (a driver older than it): every job file counts
    assert line.startswith("progress: 1 of 3 runs finished, 0 running, 2 left; jobs: 0 of 2 ended; ETA ")
    assert "measured/estimated so far" in line  # a's measured time against its estimate
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write(b.output_dir / "history.log", f"{now} start pid=1 host={host}\n")  # pid 1 lives
    assert "1 of 3 runs finished, 1 running, 1 left" in sweep_status(root)  # a live process trains b
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written

    tracker = Tracker(runs, jobs, root, workers=2, threads=1, log=lambda _: None)  # a driver of today
    write_json(jobs[1].file(root).with_suffix(".result.json"), {
        "fill": False, "wall_seconds": 3.0, "threads": 1,
        "runs": [{"output_dir": str(c.output_dir), "outcome": "failed", "error": "ValueError: x"}]})  # fmt: skip
    line = sweep_status(root)
    assert line.startswith("progress: 1 of 3 runs finished, 1 running, 1 failed, 0 left; jobs: 1 of 2 ended")
    assert line.endswith(f"its driver: pid {tracker.record['pid']} on {host}")
    tracker.close()
    assert "its driver ended at" in sweep_status(root)
    with pytest.raises(ConfigError, match="no sweep has run here"):
        sweep_status(tmp_path / "nothing")


def test_set_overrides_every_run_in_a_root_of_its_own(tiny_bert, rte_dir, tmp_path, monkeypatch, capsys):
    sweep = {"name": "o", "protocol": "quick", "tasks": ["rte"], "seeds": [1],
             "variants": {"raw": {"method": "probe"}, "adapter": {"method": "adapter@1", "bottleneck_dim": 2}},
             "common": {"model_name_or_path": tiny_bert, "glue_dir": str(rte_dir), "pooling": "mean",
                        "per_device_train_batch_size": 8}}  # fmt: skip
    file = str(write(tmp_path / "o.json", json.dumps(sweep)))
    monkeypatch.chdir(tmp_path)  # the default root, runs/sweeps, is under the test's folder
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # main's SIGTERM handler stays out of the test session
    sets = ["--set", "max_train_samples=8", "--set", "num_train_epochs=1", "--set", "lr_scheduler_type=constant"]
    assert main([file, "--root", "trials", *sets]) == 0
    folders = sorted((tmp_path / "trials" / "o").glob("rte/*/seed1"))
    assert len(folders) == 2
    for folder in folders:
        args = json.loads((folder / "args.json").read_text())
        assert (args["max_train_samples"], args["num_train_epochs"], args["lr_scheduler_type"]) == (8, 1, "constant")
        assert json.loads((folder / "all_results.json").read_text())["train_samples"] == 8
    assert json.loads((tmp_path / "trials" / "o" / "overrides.json").read_text()) == {
        "max_train_samples": 8, "num_train_epochs": 1, "lr_scheduler_type": "constant"}  # fmt: skip
    capsys.readouterr()
    # That folder is the trial's: neither the sweep's runs of record nor another trial go there.
    made = "holds runs made with --set lr_scheduler_type=constant --set max_train_samples=8 --set num_train_epochs=1"
    with pytest.raises(ConfigError, match=f"{made} .*: .* give the sweep's runs of record"):
        main([file, "--root", "trials"])
    with pytest.raises(ConfigError, match=f"{made} .*: .* give runs with --set max_train_samples=16 another"):
        main([file, "--root", "trials", "--set", "max_train_samples=16"])
    # An unknown key is refused with the closest names, before anything starts.
    with pytest.raises(ConfigError, match=r"--set max_train_sample=8: unknown argument 'max_train_sample' \(did you mean 'max_train_samples'"):  # fmt: skip
        main([file, "--root", "other", "--set", "max_train_sample=8"])
    with pytest.raises(ConfigError, match="num_train_epochs"):  # a value of the wrong type too
        main([file, "--root", "other", "--set", "num_train_epochs=many"])
    assert not (tmp_path / "other").exists()
    # No --root, the default one or the committed results: refused.
    for root in ([], ["--root", "runs/sweeps"], ["--root", str(REPO / "docs" / "results" / "runs")]):
        with pytest.raises(SystemExit):
            main([file, *root, "--set", "num_train_epochs=1"])
        assert "a --root of their own" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([file, "--root", "other", "--set", "seed=3"])  # the grid's own
    assert "set on every run by the sweep itself" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "other").exists()
    assert parse_overrides(["a=1", "b=x y", "c=[1, 2]", "d=true", "e=1e-4", "f="], None) == {
        "a": 1, "b": "x y", "c": [1, 2], "d": True, "e": 1e-4, "f": ""}  # fmt: skip


def test_the_default_root_is_outside_the_committed_results():
    from peftlab.lab.commands.sweep import COMMITTED_ROOT, DEFAULT_ROOT, make_parser

    assert make_parser().parse_args(["x.json"]).root is None and DEFAULT_ROOT == "runs/sweeps"
    assert COMMITTED_ROOT == REPO / "docs" / "results" / "runs"
    assert "ROOT:-docs/results/runs" in (REPO / "scripts" / "paper_sweeps.sh").read_text()  # passed explicitly
    assert JOBS == ".jobs"


def test_done_in_leaves_out_the_points_its_twin_sweep_finished(tiny_bert, rte_dir, tmp_path, capsys):
    sweep = {"name": "t", "protocol": "quick", "tasks": ["rte"], "seeds": [1, 2],
             "variants": {"raw": {"method": "probe"}, "adapter": {"method": "adapter@1", "bottleneck_dim": 2}},
             "common": {"model_name_or_path": tiny_bert, "glue_dir": str(rte_dir), "pooling": "mean"}}  # fmt: skip
    file = str(write(tmp_path / "t.json", json.dumps(sweep)))
    twin = str(write(tmp_path / "t_bf16.json", json.dumps({"extends": "t.json", "name": "t_bf16", "common": {"bf16": True}})))  # fmt: skip
    root = tmp_path / "runs"
    write(root / "t_bf16" / "rte" / "adapter" / "seed2" / "all_results.json", "{}")  # finished in the twin
    write(root / "t_bf16" / "rte" / "raw" / "seed1" / "args.json", "{}")  # started there, not finished
    assert main([file, "--root", str(root), "--dry_run", "--done_in", "t_bf16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 runs left out, finished in t_bf16 (--done_in)")
    assert "rte/adapter/seed2" not in out and all(f"rte/{r}" in out for r in ("raw/seed1", "raw/seed2", "adapter/seed1"))  # fmt: skip
    assert "\n3 runs, 0 finished" in out
    with pytest.raises(ConfigError, match=r"--done_in t_fp16: no sweep of that name under .*; sweeps there: t_bf16\."):
        main([file, "--root", str(root), "--dry_run", "--done_in", "t_fp16"])
    with pytest.raises(ConfigError, match="--done_in t_bf16: that is this sweep; name its twin"):
        main([twin, "--root", str(root), "--dry_run", "--done_in", "t_bf16"])
