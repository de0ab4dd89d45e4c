"""Sweep expansion and resumption, result collection, Table 1 arithmetic, and the plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, RTE_ROWS

from peftlab.errors import ConfigError
from peftlab.lab.commands.tables import make_table
from peftlab.lab.costmodel import workload
from peftlab.lab.results import axis_table, collect, format_axis_table, format_table, read_csv, table1, write_csv
from peftlab.lab.sweepfile import expand

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
    assert adapter["protocol"] == "quick" and adapter["save_model"] is False
    assert by_name["rte/raw/seed1"].args["pooling"] == "cls"  # the variant over common
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


def test_workload_counts_examples_and_estimates_tokens(rte_dir, tmp_path):
    (run,) = expand({"name": "w", "tasks": ["rte"], "variants": {"raw": {"method": "probe"}}}, tmp_path)
    load = workload(run, rte_dir)
    assert (load.train, load.eval) == (16, 16)
    words = sum(len(a.split()) + len(b.split()) for a, b, _ in RTE_ROWS) / len(RTE_ROWS)
    assert load.tokens == pytest.approx(1.2 * words + 3)


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


def test_table1_shows_each_methods_own_parameters_and_the_heads_in_a_footer(tmp_path):
    fake_runs(tmp_path, {("raw_mean", 1): 0.6, ("adapter", 1): 0.7, ("finetune", 1): 0.8})
    fake_runs(tmp_path / "b", {("raw_mean", 1): 0.6, ("adapter", 1): 0.7, ("finetune", 1): 0.8}, task="sst2")
    params = {"raw_mean": 0, "adapter": 2690, "finetune": 22713216}
    for results in tmp_path.glob("**/all_results.json"):  # heads of two sizes (as STS-B's one output and two labels)
        record, variant = json.loads(results.read_text()), results.parent.parent.name
        other = json.loads((results.parent / "sweep_point.json").read_text())["task"] == "sst2"
        record.update(method_params=params[variant], head_params=148225 if other else 148610)
        results.write_text(json.dumps(record))
    markdown = format_table(table1(collect([tmp_path]), ("raw_mean",), "finetune"))
    assert markdown.splitlines()[0].startswith("| method | params | sst2 | rte |")
    assert "| adapter | 2,690 | 70.0 (1) | 70.0 (1) |" in markdown and "| finetune | 22,713,216 |" in markdown
    assert markdown.rstrip().endswith("every row also trains the task's head (148,225-148,610 parameters).")


def test_the_csv_keeps_each_runs_cpu_and_selection_time_and_the_selection_cost_is_its_share(tmp_path):
    from conftest import load_script

    fake_runs(tmp_path, {("sparse_fisher", 1): 0.6, ("sparse_fisher", 2): 0.7, ("sparse_lt_sft", 1): 0.8})
    times = {("sparse_fisher", "1"): (4.0, 400.0), ("sparse_fisher", "2"): (2.0, 400.0), ("sparse_lt_sft", "1"): (60.0, 600.0)}  # fmt: skip
    for results in tmp_path.glob("**/all_results.json"):
        prepare, cpu = times[(results.parent.parent.name, results.parent.name)]
        results.write_text(
            json.dumps(json.loads(results.read_text()) | {"prepare_seconds": prepare, "cpu_seconds": cpu})
        )
    (tmp_path / "copied" / "1").mkdir(parents=True)  # a run copied from an identical one: its times are not its own
    for name in ("sweep_point.json", "args.json", "all_results.json"):
        (tmp_path / "copied" / "1" / name).write_text((tmp_path / "sparse_lt_sft" / "1" / name).read_text())
    (tmp_path / "copied" / "1" / "reused_from.txt").write_text("sparse_lt_sft/1")
    write_csv(collect([tmp_path]), tmp_path / "runs.csv")
    rows = read_csv(tmp_path / "runs.csv")
    fisher = next(r for r in rows if r["variant"] == "sparse_fisher" and r["seed"] == 1)
    assert (fisher["prepare_seconds"], fisher["cpu_seconds"]) == (4.0, 400.0)
    assert [r["cpu_seconds"] for r in rows if r["reused_from"]] == [None]
    check = load_script("selection_cost")
    costs = check.selection_costs(rows, ["s"])
    assert costs["sparse_lt_sft"]["seconds"] == [60.0]  # the copied run is left out
    text = check.markdown(costs)
    assert "| sparse_fisher | 2 | rte | 3.0 (2.0-4.0) | 0.8% (0.5%-1.0%) |" in text
    assert "| sparse_lt_sft | 1 | rte | 60.0 | 10.0% |" in text
    assert check.selection_costs(rows, ["other"]) == {}


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


def test_splice_tables_replaces_marked_blocks_only(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from splice_tables import splice

    (tmp_path / "t1.md").write_text("| a |\n")
    doc = "intro\n<!-- table: t1 -->\nold\n<!-- /table -->\nkept\n"
    text, names = splice(doc, tmp_path)
    assert text == "intro\n<!-- table: t1 -->\n| a |\n<!-- /table -->\nkept\n" and names == ["t1"]
    with pytest.raises(SystemExit, match="t2.md does not exist"):
        splice("<!-- table: t2 -->\n<!-- /table -->", tmp_path)


def test_collect_keeps_rows_of_sweeps_whose_runs_are_gone_and_reads_best_and_last(tmp_path):
    fake_runs(tmp_path / "runs", {("raw", 1): 0.5})
    folder = tmp_path / "runs" / "raw" / "1"
    results = json.loads((folder / "all_results.json").read_text())
    results.update(
        best_evaluation={"eval_accuracy": 0.5, "epoch": 2.0}, last_evaluation={"eval_accuracy": 0.25, "epoch": 7.0}
    )
    (folder / "all_results.json").write_text(json.dumps(results))
    old = tmp_path / "old.csv"
    write_csv([{"sweep": "gone", "task": "rte", "variant": "x", "seed": 1, "score": 0.7}], old)
    out = tmp_path / "runs.csv"
    proc = subprocess.run([sys.executable, "scripts/collect.py", str(tmp_path / "runs"), str(tmp_path / "absent"),
                           "--keep", str(old), "--out", str(out)], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["sweep"]: r for r in read_csv(out)}
    assert set(rows) == {"gone", "s"} and rows["gone"]["score"] == 0.7
    assert (rows["s"]["score"], rows["s"]["last_score"], rows["s"]["best_epoch"], rows["s"]["epochs_run"]) == (
        0.5,
        0.25,
        2,
        7,
    )
    from peftlab.lab.results import select_score

    assert [r["score"] for r in select_score([rows["s"]], "last")] == [0.25]


def test_a_table_of_two_sweeps_takes_each_run_once_and_names_where_its_cells_came_from(tmp_path):
    fake_runs(tmp_path / "f32", {("raw_mean", 1): 0.6, ("finetune", 1): 0.8})
    fake_runs(tmp_path / "b16", {("raw_mean", 1): 0.5, ("adapter", 1): 0.7})
    for point in (tmp_path / "b16").glob("**/sweep_point.json"):
        point.write_text(point.read_text().replace('"sweep": "s"', '"sweep": "s_bf16"'))
    rows = collect([tmp_path])
    table, render = make_table(rows, "s,s_bf16")
    # raw_mean is in both: the first sweep listed gives it (60, not 50)
    assert table["stats"][("raw_mean", "rte")] == {"mean": pytest.approx(60.0), "std": 0.0, "n": 1}
    assert table["derived"][("adapter", "rte")]["gap_bridged"] == pytest.approx(0.5)
    footer = render(table, "markdown").rstrip().splitlines()[-1]
    assert footer == "Cells from sweep s_bf16: rte: adapter; every other cell from sweep s."
    assert make_table(rows, "s_bf16,s")[0]["stats"][("raw_mean", "rte")]["mean"] == pytest.approx(50.0)
    assert "Cells from" not in render(*make_table(rows, "s"))  # one sweep: no footer line
    with pytest.raises(ConfigError, match="no runs of sweep 'nope' in the CSV; sweeps found: s_bf16, s"):
        make_table(rows, "s,nope")


def test_table1_of_some_tasks_averages_over_those_only(tmp_path):
    fake_runs(tmp_path / "a", {("raw_mean", 1): 0.6, ("adapter", 1): 0.7, ("finetune", 1): 0.8})
    fake_runs(tmp_path / "b", {("raw_mean", 1): 0.6, ("adapter", 1): 0.8, ("finetune", 1): 0.8}, task="sst2")
    rows = collect([tmp_path])
    table, render = make_table(rows, "s", tasks="rte", cells="gap_bridged")
    assert table["tasks"] == ["rte"] and "| adapter | 50.0% | 16.7% | 50.0% |" in render(table)
    assert make_table(rows, "s")[0]["tasks"] == ["sst2", "rte"]
    with pytest.raises(ConfigError, match="--tasks mrpc: no runs of s have that task; its tasks: rte,sst2"):
        make_table(rows, "s", tasks="rte,mrpc")
    with pytest.raises(ConfigError, match="--tasks rte: only for Table 1"):
        make_table(rows, "s", tasks="rte", by="layer")
