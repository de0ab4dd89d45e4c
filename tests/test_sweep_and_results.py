"""Sweep expansion and resumption, result collection, Table 1 arithmetic, and the plots."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO, RTE_ROWS, write

from peftlab.errors import ConfigError
from peftlab.io import write_json
from peftlab.results import axis_table, collect, format_axis_table, format_table, read_csv, table1, write_csv
from peftlab.sweep import (
    Workload,
    as_flags,
    cache_key,
    cost_terms,
    estimate_seconds,
    expand,
    run_all,
    run_args,
    twins,
    workload,
)

SWEEP = {
    "name": "t",
    "tasks": ["rte", "qnli"],
    "seeds": [1, 2],
    "layers": [0, 1],
    "variants": {
        "raw": {"method": "probe", "pooling": "cls"},
        "adapter": {"method": "adapter", "per_layer": True, "bottleneck_dim": 2},
        "two": {"method": "adapter@{layer},{next_layer}", "per_layer": True, "num_hidden_layers": "{next_layer}"},
        "full": {"method": "full"},
    },
    "common": {"pooling": "mean", "num_train_epochs": 1},
    "task_args": {"rte": {"num_train_epochs": 2}},
}


def test_grid_expands_with_layers_seeds_protocols_and_precedence(tmp_path):
    runs = expand(SWEEP, tmp_path)
    assert len(runs) == 2 * 2 * (1 + 2 + 2 + 1)
    by_name = {r.name: r for r in runs}
    adapter = by_name["rte/adapter/L1/seed2"].args
    assert adapter["method"] == "adapter@1" and adapter["bottleneck_dim"] == 2 and adapter["seed"] == 2
    assert adapter["num_train_epochs"] == 2 and adapter["pooling"] == "mean"  # task_args over common
    assert adapter["learning_rate"] == adapter["head_learning_rate"] == 2e-3
    assert by_name["rte/raw/seed1"].args["pooling"] == "cls"  # the variant over common
    assert by_name["rte/full/seed1"].args["learning_rate"] == 5e-5
    two = by_name["qnli/two/L0/seed1"].args
    assert two["method"] == "adapter@0,1" and two["num_hidden_layers"] == 1
    assert two["train_split"] == "validation" and two["split_dev"] == 0.25
    assert by_name["qnli/raw/seed1"].point == {
        "sweep": "t",
        "task": "qnli",
        "variant": "raw",
        "layer": None,
        "bottleneck_dim": None,
        "seed": 1,
    }


def test_cost_model_follows_length_layers_and_the_cache(tmp_path):
    runs = {run.name: run for run in expand({
        "name": "c", "tasks": ["rte"], "common": {"cache_frozen_prefix": True},
        "variants": {"lora": {"method": "lora@5"}, "bitfit": {"method": "bitfit@5"}, "adapter": {"method": "adapter@2"},
                     "raw": {"method": "probe", "pooling": "cls"}, "full": {"method": "full"}},
    }, tmp_path)}  # fmt: skip
    lora, bitfit, adapter = runs["rte/lora/seed42"], runs["rte/bitfit/seed42"], runs["rte/adapter/seed42"]
    assert cache_key(lora) == cache_key(bitfit) != cache_key(adapter)  # the same frozen prefix: one cache
    assert cache_key(runs["rte/raw/seed42"])[-1] == "cls" and cache_key(runs["rte/full/seed42"]) is None
    short, long = Workload(train=1000, eval=100, tokens=15), Workload(train=1000, eval=100, tokens=60)
    assert estimate_seconds(lora, short) < estimate_seconds(lora, long)
    assert estimate_seconds(lora, long, fills_cache=False) < estimate_seconds(lora, long)
    assert (
        estimate_seconds(lora, long) < estimate_seconds(adapter, long) < estimate_seconds(runs["rte/full/seed42"], long)
    )
    terms = cost_terms(adapter, long, fills_cache=False)
    assert terms["overhead"] == 1 and terms["forward"] == pytest.approx(100 * 4 / 6)  # eval above the cache only
    assert terms["frozen"] == pytest.approx(3 * 1000 * 4 / 6)


def test_workload_counts_examples_and_estimates_tokens(rte_dir, tmp_path):
    (run,) = expand({"name": "w", "tasks": ["rte"], "variants": {"raw": {"method": "probe"}}}, tmp_path)
    load = workload(run, rte_dir)
    assert (load.train, load.eval) == (16, 16)
    words = sum(len(a.split()) + len(b.split()) for a, b, _ in RTE_ROWS) / len(RTE_ROWS)
    assert load.tokens == pytest.approx(1.2 * words + 3)


def test_dry_run_lists_runs_in_the_order_of_tasks_with_an_estimate(rte_dir, tmp_path):
    rows = "".join(f"{i}\ta{i} b c\td e\t{i % 2}\n" for i in range(8))
    write(rte_dir / "WNLI" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n" + rows)
    write(rte_dir / "WNLI" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n" + rows)
    sweep = tmp_path / "s.json"
    sweep.write_text(json.dumps({"name": "d", "tasks": ["rte", "wnli"], "variants": {"full": {"method": "full"}}}))
    command = [
        sys.executable,
        "scripts/sweep.py",
        str(sweep),
        "--root",
        str(tmp_path / "runs"),
        "--glue_dir",
        str(rte_dir),
    ]
    out = subprocess.run([*command, "--dry_run", "--tasks", "wnli,rte"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("wnli/full/seed42") and lines[1].startswith("rte/full/seed42")
    assert "core-min" in lines[0] and "2 runs, 0 finished" in out.stdout and "core-hours" in out.stdout
    assert not (tmp_path / "runs").exists()  # a dry run starts nothing
    bad = subprocess.run([*command, "--dry_run", "--tasks", "mnli"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--tasks mnli: not in the sweep; its tasks are rte, wnli" in bad.stderr
    for task in ("rte", "wnli"):  # both runs held by a live process (this one): the sweep leaves them and says so
        lock = tmp_path / "runs" / "d" / task / "full" / "seed42" / ".running"
        write(lock, f"{socket.gethostname()} {os.getpid()}")
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "0 of 2 runs finished; 2 running in another sweep process"


def test_estimate_check_fits_the_cost_model_to_measured_runs(rte_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("estimate_check", REPO / "scripts" / "estimate_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    lora = {"method": "lora@5", "cache_frozen_prefix": True}
    variants = {"full": {"method": "full"}, "lora": lora, "hit": {**lora, "seed": 7}}
    runs = expand({"name": "e", "tasks": ["rte"], "seeds": [1, 2, 3], "variants": variants}, tmp_path / "runs")
    truth = {"overhead": 5.0, "forward": 0.01, "read": 0.001, "full": 0.05, "frozen": 0.02}
    for index, run in enumerate(runs):
        run.args["max_train_samples"] = 4 + 5 * (index // 3)  # different workloads, so that the fit is determined
        fills = run.point["variant"] == "lora"
        run.output_dir.mkdir(parents=True)
        write_json(run.output_dir / "args.json", run.args)
        (run.output_dir / "log.txt").write_text("Frozen-prefix cache written: x\n" if fills else "cache hit\n")
        seconds = sum(n * truth[u] for u, n in cost_terms(run, workload(run, rte_dir), fills).items())
        (run.output_dir / "threads.txt").write_text("2\n")
        (run.output_dir / "wall_seconds.txt").write_text(f"{seconds / 2}\n")  # two threads: half the wall time
    found = check.measured_runs([str(tmp_path / "runs")], str(rte_dir), threads=1)
    assert len(found) == 9 and [filled for _, _, filled, _ in found].count(True) == 3
    cost, error = check.fit(found)
    assert error < 1e-6 and cost == pytest.approx(truth)


def fake_python(tmp_path, body: str = "") -> str:
    """An executable standing in for ``python run_glue.py args.json``: runs ``body``, then writes the results."""
    fake = tmp_path / "fake_run_glue.py"
    fake.write_text(
        "import json, os, pathlib, sys, time\n"
        "args = json.loads(pathlib.Path(sys.argv[2]).read_text())\n"
        "out = pathlib.Path(args['output_dir'])\n"
        + body
        + "(out / 'all_results.json').write_text(json.dumps({'eval_accuracy': 0.5, 'data_protocol': {}}))\n"
    )
    script = tmp_path / "python.sh"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {fake} "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_sweep_skips_finished_runs_and_reruns_interrupted_ones(tmp_path):
    runs = expand({**SWEEP, "tasks": ["rte"], "seeds": [1]}, tmp_path)[:3]
    runs[0].output_dir.mkdir(parents=True)
    (runs[0].output_dir / "all_results.json").write_text('{"eval_accuracy": 0.9}')
    runs[1].output_dir.mkdir(parents=True)
    (runs[1].output_dir / "partial.txt").write_text("interrupted")
    log = []
    assert run_all(runs, python=fake_python(tmp_path), log=log.append) == []
    assert log[0].startswith("[1/3] skip rte/raw/seed1")
    assert json.loads((runs[0].output_dir / "all_results.json").read_text()) == {"eval_accuracy": 0.9}
    assert json.loads((runs[1].output_dir / "args.json").read_text())["method"] == "adapter@0"
    assert (runs[2].output_dir / "wall_seconds.txt").is_file() and (runs[2].output_dir / "threads.txt").is_file()
    assert not list(tmp_path.rglob(".running"))


def test_pooling_axis_gives_one_row_per_pooling(tmp_path):
    sweep = {"name": "p", "tasks": ["rte"], "poolings": ["cls", "mean"], "variants": {
        "raw": {"method": "probe", "per_pooling": True}, "full": {"method": "full", "pooling": "cls"}}}  # fmt: skip
    runs = {run.name: run for run in expand(sweep, tmp_path)}
    assert list(runs) == ["rte/raw_cls/seed42", "rte/raw_mean/seed42", "rte/full/seed42"]
    assert (
        runs["rte/raw_mean/seed42"].args["pooling"] == "mean" and "per_pooling" not in runs["rte/raw_mean/seed42"].args
    )
    assert runs["rte/raw_cls/seed42"].point["variant"] == "raw_cls"


def test_sweep_order_puts_seeds_outermost(tmp_path):
    seeds = [run.point["seed"] for run in expand(SWEEP, tmp_path)]
    assert seeds == sorted(seeds, key=[1, 2].index) and seeds[0] == 1 and seeds[-1] == 2


def test_sweep_workers_run_side_by_side_with_split_threads(tmp_path, monkeypatch):
    import peftlab.sweep

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(peftlab.sweep.os, "cpu_count", lambda: 4)
    runs = expand({**SWEEP, "tasks": ["rte"], "seeds": [1]}, tmp_path)[:4]
    body = (
        "(out / 'span.json').write_text(json.dumps([time.time(), os.environ['OMP_NUM_THREADS']]))\n"
        "time.sleep(1.5)\n"
        "(out / 'span.json').write_text(json.dumps([json.loads((out / 'span.json').read_text())[0], time.time(),"
        " os.environ['OMP_NUM_THREADS']]))\n"
    )
    assert run_all(runs, python=fake_python(tmp_path, body), log=lambda _: None, workers=2) == []
    spans = [json.loads((run.output_dir / "span.json").read_text()) for run in runs]
    assert {threads for _, _, threads in spans} == {"2"}  # 4 cores // 2 workers

    def running_at(t):
        return sum(start <= t < end for start, end, _ in spans)

    assert max(running_at(start) for start, _, _ in spans) == 2  # side by side, never more than 2


def test_sweep_skips_runs_locked_by_a_live_process_and_takes_over_dead_locks(tmp_path):
    import socket

    runs = expand({**SWEEP, "tasks": ["rte"], "seeds": [1]}, tmp_path)[:2]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for run, pid in zip(runs, (os.getpid(), dead.pid)):
        run.output_dir.mkdir(parents=True)
        (run.output_dir / ".running").write_text(f"{socket.gethostname()} {pid}")
    log = []
    assert run_all(runs, python=fake_python(tmp_path), log=log.append) == []
    assert "running in another sweep process" in log[0] and not runs[0].finished
    assert (runs[0].output_dir / ".running").is_file()  # the live owner's lock is left alone
    assert runs[1].finished and not (runs[1].output_dir / ".running").exists()
    with pytest.raises(ConfigError, match="workers must be at least 1, got 0"):
        run_all(runs, workers=0)


def fake_runs(
    tmp_path,
    scores: dict[tuple[str, int], float],
    task: str = "rte",
    train_split: str = "train",
    evaluated="validation",
) -> None:
    for (variant, seed), score in scores.items():
        out = tmp_path / variant / str(seed)
        out.mkdir(parents=True)
        (out / "sweep_point.json").write_text(
            json.dumps(
                {"sweep": "s", "task": task, "variant": variant, "layer": None, "bottleneck_dim": None, "seed": seed}
            )
        )
        (out / "args.json").write_text(json.dumps({"method": variant, "pooling": "mean"}))
        (out / "all_results.json").write_text(
            json.dumps(
                {
                    "eval_accuracy": score,
                    "trainable_params": 10,
                    "data_protocol": {"train_split": train_split, "eval_splits": {"validation": evaluated}},
                }
            )
        )


def test_collect_and_table1_arithmetic(tmp_path):
    # raw_cls 50, raw_mean 60 (best raw), method 70 +- (68, 72), full 80:
    # relative improvement (70-60)/60 = 16.7 %, gap bridged (70-60)/(80-60) = 50 %.
    fake_runs(
        tmp_path,
        {("raw_cls", 1): 0.5, ("raw_mean", 1): 0.6, ("adapter", 1): 0.68, ("adapter", 2): 0.72, ("finetune", 1): 0.8}
        | {("raw_cls", 2): 0.5, ("raw_mean", 2): 0.6, ("finetune", 2): 0.8},
    )
    rows = collect([tmp_path])
    write_csv(rows, tmp_path / "runs.csv")
    rows = read_csv(tmp_path / "runs.csv")
    assert len(rows) == 8 and {r["metric"] for r in rows} == {"accuracy"}
    table = table1(rows, ("raw_cls", "raw_mean"), "finetune")
    assert table["stats"][("adapter", "rte")]["mean"] == pytest.approx(70.0)
    assert table["stats"][("adapter", "rte")]["std"] == pytest.approx(2.8284271, rel=1e-6)
    derived = table["derived"][("adapter", "rte")]
    assert derived["relative_improvement"] == pytest.approx(10 / 60)
    assert derived["gap_bridged"] == pytest.approx(0.5)
    markdown = format_table(table)
    assert "| adapter | 70.0 ± 2.8 (2) | 16.7% | 50.0% |" in markdown
    assert "| adapter | 50.0% | 16.7% | 50.0% |" in format_table(table, cells="gap_bridged")
    assert "| raw_mean | 0.0% | 0.0% | 0.0% |" in format_table(table, cells="relative_improvement")
    with pytest.raises(ValueError, match="cells='gap': must be one of score, relative_improvement, gap_bridged"):
        format_table(table, cells="gap")
    assert "\\pm" in format_table(table, "latex")
    assert format_table(table, "csv").splitlines()[0] == "method,rte,avg rel. impr.,avg gap bridged"
    assert "†" not in markdown
    # a seed that not every row has finished is left out of the task's column
    fake_runs(tmp_path / "partial", {("adapter", 3): 0.1})
    partial = table1(collect([tmp_path]), ("raw_cls", "raw_mean"), "finetune")
    assert partial["stats"][("adapter", "rte")] == table["stats"][("adapter", "rte")]
    # a task whose rows are not all there yet has no column (its finished rows wait for the others)
    fake_runs(tmp_path / "cola", {("raw_cls", 1): 0.1, ("raw_mean", 1): 0.2, ("finetune", 1): 0.3}, task="cola")
    assert table1(collect([tmp_path]), ("raw_cls", "raw_mean"), "finetune")["tasks"] == ["rte"]


def test_table_marks_tasks_trained_under_an_offline_protocol(tmp_path):
    fake_runs(tmp_path / "a", {("raw_mean", 1): 0.6, ("finetune", 1): 0.8})
    fake_runs(
        tmp_path / "b", {("raw_mean", 1): 0.5, ("finetune", 1): 0.7}, "qnli", "part of dev", "held-out part of dev"
    )
    table = table1(collect([tmp_path]), ("raw_cls", "raw_mean"), "finetune")
    markdown = format_table(table)
    assert markdown.splitlines()[0].startswith("| method | qnli† | rte |")
    assert markdown.rstrip().endswith("† qnli: trained on part of dev, evaluated on held-out part of dev.")
    assert "$^\\dagger$" in format_table(table, "latex")
    assert format_table(table, "csv").splitlines()[0].startswith("method,qnli,rte,")


def test_plot_script_writes_a_png(tmp_path):
    fake_runs(tmp_path, {("raw_mean", 1): 0.6, ("finetune", 1): 0.8})
    for layer, score in ((0, 0.62), (1, 0.7)):
        out = tmp_path / "ad" / str(layer)
        out.mkdir(parents=True)
        (out / "sweep_point.json").write_text(
            json.dumps(
                {"sweep": "s", "task": "rte", "variant": "adapter", "layer": layer, "bottleneck_dim": None, "seed": 1}
            )
        )
        (out / "args.json").write_text(json.dumps({"method": f"adapter@{layer}"}))
        (out / "all_results.json").write_text(json.dumps({"eval_accuracy": score}))
    write_csv(collect([tmp_path]), tmp_path / "runs.csv")
    png = tmp_path / "fig.png"
    subprocess.run(
        [sys.executable, "scripts/plots.py", str(tmp_path / "runs.csv"), "--sweep", "s", "--out", str(png)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    command = [sys.executable, "scripts/plots.py", str(tmp_path / "runs.csv"), "--sweep", "s", "--out", str(png)]
    bad = subprocess.run([*command, "--variants", "adapter,lora"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--variants lora: no runs of s/rte have that variant" in bad.stderr
    png.unlink()
    subprocess.run([*command, "--variants", "adapter,finetune"], cwd=REPO, check=True, capture_output=True)
    assert png.is_file()


def test_layer_table_best_cell_and_gap_bridged():
    def row(variant, layer, seed, score):
        return {"task": "mrpc", "variant": variant, "layer": layer, "seed": seed, "score": score}

    rows = [row("raw", 0, 1, 0.50), row("raw", 1, 1, 0.60), row("finetune", None, 1, 0.80)]
    rows += [row("adapter", 0, 1, 0.66), row("adapter", 0, 2, 0.70), row("adapter", 1, 1, 0.64)]
    table = axis_table(rows, "layer", ("raw",), "finetune")
    assert table["best"]["adapter"] == {"at": 0, "mean": pytest.approx(68.0), "gap_bridged": pytest.approx(0.4)}
    markdown = format_axis_table(table)
    lines = markdown.splitlines()
    assert lines[0] == "| method | L0 | L1 | not per layer | best | gap bridged |"
    assert "| adapter | 68.0 ± 2.8 (2) | 64.0 (1) |  | 68.0 (L0) | 40% |" in lines
    assert "| finetune |  |  | 80.0 (1) | 80.0 | 100% |" in lines
    assert "best raw 60.0" in lines[-1] and "full fine-tuning 80.0" in lines[-1]


def test_identical_runs_across_sweeps_are_reused_not_rerun(tmp_path):
    first = {"name": "a", "tasks": ["rte"], "variants": {"ad": {"method": "adapter@1", "placement": "ffn"}}}
    second = {"name": "b", "tasks": ["rte"], "variants": {"x": {"method": "adapter@1"}, "y": {"method": "adapter@0"}}}
    python = fake_python(tmp_path)
    assert run_all(expand(first, tmp_path), python=python, log=lambda _: None, reuse_root=tmp_path) == []
    log = []
    runs = expand(second, tmp_path)
    assert run_all(runs, python=python, log=log.append, reuse_root=tmp_path) == []
    assert log[0] == "[1/2] reuse rte/x/seed42: identical to the finished " + str(tmp_path / "a/rte/ad/seed42")
    assert (runs[0].output_dir / "reused_from.txt").is_file() and not (runs[0].output_dir / "log.txt").exists()
    assert (runs[1].output_dir / "log.txt").is_file()  # adapter@0 differs: it ran
    rows = {r["variant"]: r for r in collect([tmp_path])}
    assert rows["x"]["reused_from"] == str(tmp_path / "a/rte/ad/seed42") and rows["x"]["wall_seconds"] is None
    assert rows["ad"]["reused_from"] is None and rows["ad"]["wall_seconds"] is not None
    third = expand({**second, "name": "c"}, tmp_path)
    assert run_all(third, python=python, log=lambda _: None) == []  # no reuse_root: everything runs
    assert all((run.output_dir / "log.txt").is_file() for run in third)


def test_glue_sh_uses_the_sweeps_defaults_and_offline_protocols(tmp_path):
    def command(*args):
        out = subprocess.run(
            ["bash", "scripts/glue.sh", *args],
            cwd=REPO, env={**os.environ, "DRY_RUN": "1", "OUT_DIR": str(tmp_path / "run")},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.split()

    qnli = command("qnli", "lora@5", "--seed", "7")
    expected = as_flags(run_args("qnli", "lora@5"))
    assert qnli[2 : 2 + len(expected)] == expected and "--split_dev" in expected
    assert qnli[-2:] == ["--seed", "7"]  # the caller's flags come last, so they win
    own_split = command("qnli", "full", "--train_split", "train")
    assert "--split_dev" not in own_split and own_split[own_split.index("--learning_rate") + 1] == "5e-05"
    point = expand({"name": "s", "tasks": ["qnli"], "variants": {"v": {"method": "lora@5"}}}, tmp_path)[0]
    assert {k: v for k, v in point.args.items() if k != "output_dir"} == run_args("qnli", "lora@5")


def test_splice_tables_replaces_marked_blocks_only(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from splice_tables import splice

    (tmp_path / "t1.md").write_text("| a |\n")
    doc = "intro\n<!-- table: t1 -->\nold\n<!-- /table -->\nkept\n"
    text, names = splice(doc, tmp_path)
    assert text == "intro\n<!-- table: t1 -->\n| a |\n<!-- /table -->\nkept\n" and names == ["t1"]
    with pytest.raises(SystemExit, match="t2.md does not exist"):
        splice("<!-- table: t2 -->\n<!-- /table -->", tmp_path)


def test_a_run_whose_twin_is_running_waits_for_it_and_takes_its_results(tmp_path):
    sweep = {"name": "w", "tasks": ["rte"], "variants": {"a": {"method": "lora@1"}, "b": {"method": "lora@1"}}}
    runs = expand(sweep, tmp_path)
    log = []
    python = fake_python(tmp_path, "time.sleep(1.5)\n")
    assert run_all(runs, python=python, log=log.append, workers=2, reuse_root=tmp_path) == []
    assert log[0] == "[1/2] run rte/a/seed42"
    assert log[1].startswith("[2/2] later rte/b/seed42: the identical ")
    assert log[-1] == f"[2/2] reuse rte/b/seed42: identical to the finished {runs[0].output_dir}"
    assert not (runs[1].output_dir / "log.txt").exists() and not list(tmp_path.rglob(".running"))


def test_a_locked_run_with_results_is_still_running_not_finished(tmp_path):
    """Its process may still be writing files after the results: it is reused only once its lock is gone."""
    folder = tmp_path / "w" / "rte" / "a" / "seed42"
    folder.mkdir(parents=True)
    write_json(folder / "args.json", {"task_name": "rte", "method": "lora@1"})
    (folder / "all_results.json").write_text('{"eval_accuracy": 0.5}')
    (folder / ".running").write_text(f"{socket.gethostname()} {os.getpid()}")
    done, running = twins(tmp_path)
    assert not done and [path for _, path in next(iter(running.values()))] == [folder]
    (folder / ".running").unlink()
    done, running = twins(tmp_path)
    assert list(done.values()) == [folder] and not running


def test_runs_sharing_a_frozen_prefix_cache_do_not_compute_it_side_by_side(tmp_path):
    sweep = {"name": "c", "tasks": ["rte"], "common": {"cache_frozen_prefix": True},
             "variants": {"lora": {"method": "lora@3"}, "bitfit": {"method": "bitfit@3"}, "adapter": {"method": "adapter@1"}}}  # fmt: skip
    runs = expand(sweep, tmp_path)
    assert cache_key(runs[0]) == cache_key(runs[1]) != cache_key(runs[2])
    body = "t0 = time.time()\ntime.sleep(1.5)\n(out / 'span.json').write_text(json.dumps([t0, time.time()]))\n"
    log = []
    assert run_all(runs, python=fake_python(tmp_path, body), log=log.append, workers=2) == []
    assert log[:3] == [
        "[1/3] run rte/lora/seed42",
        "[2/3] later rte/bitfit/seed42: rte/lora/seed42 is computing the frozen-prefix cache it reads",
        "[3/3] run rte/adapter/seed42",
    ]
    lora, bitfit, adapter = (json.loads((run.output_dir / "span.json").read_text()) for run in runs)
    assert bitfit[0] >= lora[1] and adapter[0] < lora[1]  # bitfit after lora; adapter beside it
