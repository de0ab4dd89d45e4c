"""``--target_layers auto``: the layer is chosen on a split of the training set by successive halving through
Optuna, then trained on the whole training set; every candidate's scores, budget and the split are recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import count_training_steps, kill_after_checkpoint, write

from peftlab.errors import ConfigError
from peftlab.lab.run import main


@pytest.fixture
def rte_distinct(tmp_path):
    """RTE train and dev with different rows, so that a selection split taken from dev would be noticed."""
    header = "index\tsentence1\tsentence2\tlabel\n"
    train = "".join(
        f"{i}\ttrain sentence {i} about cats\tcats {i % 3}\t{'entailment' if i % 2 else 'not_entailment'}\n"
        for i in range(40)
    )
    dev = "".join(
        f"{i}\tdev words {i} on dogs\tdogs {i % 5}\t{'entailment' if i % 3 else 'not_entailment'}\n" for i in range(12)
    )
    write(tmp_path / "glue" / "RTE" / "train.tsv", header + train)
    write(tmp_path / "glue" / "RTE" / "dev.tsv", header + dev)
    return tmp_path / "glue"


def run(tiny_bert, glue, out, *extra):
    return main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(glue), "--output_dir",
                 str(out), "--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
                 "--pooling", "mean", "--disable_tqdm", "True", "--seed", "3", *extra])  # fmt: skip


@pytest.mark.parametrize("cache", [False, True])
def test_auto_chooses_a_layer_on_a_split_of_the_training_set_and_records_every_candidate(
    tiny_bert, rte_distinct, tmp_path, cache
):
    extra = ["--cache_frozen_prefix", "true", "--frozen_cache_dir", str(tmp_path / "cache")] if cache else ["--cache_frozen_prefix", "false"]  # fmt: skip
    results = run(tiny_bert, rte_distinct, tmp_path / "o", "--method", "adapter", "--target_layers", "auto",
                  "--bottleneck_dim", "2", *extra)  # fmt: skip
    auto = results["auto_layer"]
    assert auto["chosen_layer"] in (0, 1) and set(auto["candidates"]) == {"0", "1"}
    assert auto["selection_split"].startswith("8 examples held out of the 40 training examples")
    assert results["train_samples"] == 40 and results["eval_samples"] == 12  # then the whole train set, dev as usual
    states = {c["state"] for c in auto["candidates"].values()}
    assert "complete" in states and states <= {"complete", "pruned"}
    assert all(c["evaluations"] and c["proxy_gradient_norm"] > 0 for c in auto["candidates"].values())
    rungs = [e for c in auto["candidates"].values() for e in c["evaluations"]]
    assert all({"step", "eval_accuracy", "eval_loss"} <= set(e) for e in rungs)  # every metric of every rung
    assert auto["budget"]["most_steps_per_candidate"] >= auto["budget"]["rung_steps"] >= 1
    assert auto["cost_in_runs"] > 1
    # the chosen layer against the other one at the last rung, with a bootstrap interval of the difference
    chosen, other = str(auto["chosen_layer"]), str(1 - auto["chosen_layer"])
    close = auto["margin"]
    last = {layer: auto["candidates"][layer]["evaluations"][-1]["eval_accuracy"] for layer in (chosen, other)}
    assert close["runner_up"] == int(other) and close["difference"] == pytest.approx(last[chosen] - last[other])
    low, high = close["interval_90"]
    assert low <= high and close["separable"] == (low > 0) and 0 <= close["share_runner_up_ahead"] <= 1
    assert close["resamples"] == 1000
    config = json.loads((tmp_path / "o" / "run_config.json").read_text())
    assert config["peft_args"]["method"] == f"adapter@{auto['chosen_layer']}" and config["auto_layer"] == auto
    assert not list((tmp_path / "o").glob("auto_layer_*"))  # the candidates' scratch folders are gone


def test_auto_with_the_proxy_alone_trains_no_candidate(tiny_bert, rte_distinct, tmp_path):
    results = run(tiny_bert, rte_distinct, tmp_path / "o", "--method", "lora@auto", "--auto_layer_strategy", "proxy")
    auto = results["auto_layer"]
    assert auto["chosen_layer"] == auto["proxy_choice"] and auto["selection_steps"] == 0
    assert "margin" not in auto  # no rung: nothing to measure a margin at


def candidate(layer, step, score, loss, predictions, labels):
    from peftlab.lab.autolayer import Candidate

    evaluation = {"step": step, "eval_combined_score": score, "eval_loss": loss}
    return Candidate(layer, evaluations=[evaluation], predictions=(np.asarray(predictions), np.asarray(labels)))


def test_the_margin_of_a_choice_is_a_paired_bootstrap_over_the_selection_split():
    from peftlab.glue.metrics import glue_metrics
    from peftlab.glue.tasks import get_task
    from peftlab.lab.autolayer import margin

    mrpc = get_task("mrpc")  # the combined score: the mean of F1 and accuracy
    labels = np.array([1, 0] * 50)
    right, wrong, half = labels, 1 - labels, np.where(np.arange(100) < 50, labels, 1 - labels)
    score = {name: glue_metrics(mrpc, p, labels)["combined_score"] for name, p in (("right", right), ("half", half))}
    pruned_early = candidate(2, 2, 0.9, 0.1, right, labels)  # judged at an earlier rung only: not a rival
    cands = [candidate(0, 5, score["right"], 0.2, right, labels), candidate(1, 5, score["half"], 0.3, half, labels),
             pruned_early]  # fmt: skip
    close = margin(cands, 0, mrpc, "combined_score", True, seed=0)
    # always right against right on half the examples: ahead on every resample of the 100 examples
    assert close["runner_up"] == 1 and close["difference"] == pytest.approx(score["right"] - score["half"])
    assert close["separable"] and close["interval_90"][0] > 0 and close["share_runner_up_ahead"] == 0
    assert margin(cands, 0, mrpc, "combined_score", True, seed=0) == close  # seeded
    # the same predictions (equal scores, told apart by the loss): a difference of 0 on every resample
    level = [candidate(0, 5, 0.5, 0.2, half, labels), candidate(1, 5, 0.5, 0.3, half, labels)]
    same = margin(level, 0, mrpc, "combined_score", True, seed=0)
    assert same["difference"] == 0 and same["interval_90"] == [0, 0] and not same["separable"]
    assert same["share_runner_up_ahead"] == 1
    # lower is better (a loss-like metric): the sign follows, so the chosen one's lead is still positive
    low = [candidate(0, 5, 0.2, 0.2, right, labels), candidate(1, 5, 0.4, 0.3, wrong, labels)]
    assert margin(low, 0, mrpc, "combined_score", False, seed=0)["difference"] == pytest.approx(0.2)
    # the loss is no metric of predictions: the difference, without a bootstrap
    lossy = margin(level, 0, mrpc, "loss", False, seed=0)
    assert lossy["difference"] == pytest.approx(0.1) and lossy["bootstrap"].startswith("not available")
    assert "separable" not in lossy
    # no rival at the chosen one's last rung: no margin
    assert margin([cands[0]], 0, mrpc, "combined_score", True, seed=0) is None


@pytest.mark.parametrize(
    "method,extra,message",
    [
        ("full", ["--target_layers", "auto"], r"--method full has no layer to choose"),
        ("adapter@auto+lora@1", [], r"auto layer selection takes one method, not a combination"),
        ("adapter", ["--target_layers", "auto", "--auto_layers", "0-7"], r"Layer 7 is out of range"),
        ("adapter", ["--target_layers", "auto", "--auto_layer_strategy", "random"], r"--auto_layer_strategy 'random' is not valid"),
    ],
)  # fmt: skip
def test_bad_auto_requests_fail_before_anything_trains(tiny_bert, rte_distinct, tmp_path, method, extra, message):
    with pytest.raises(ConfigError, match=message):
        run(tiny_bert, rte_distinct, tmp_path / "o", "--method", method, *extra)


def test_plot_of_the_candidates_curves(tiny_bert, rte_distinct, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    results = run(tiny_bert, rte_distinct, tmp_path / "o", "--method", "bitfit", "--target_layers", "auto")
    out = tmp_path / "candidates.png"
    proc = subprocess.run([sys.executable, "scripts/plots.py", "--auto_layer", str(tmp_path / "o"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from peftlab.lab.commands import plots

    record = results["auto_layer"]
    bars, curves = plots.auto_layer_figure(record).axes
    norms = [record["candidates"][layer]["proxy_gradient_norm"] for layer in ("0", "1")]
    assert [patch.get_height() for patch in bars.patches] == pytest.approx(norms)
    labels = [line.get_label() for line in curves.get_lines() if not line.get_label().startswith("_")]
    assert f"L{record['chosen_layer']} (complete, chosen)" in labels and len(labels) == 3
    assert "the probe the candidates start from" in labels  # the warm head (the default) is drawn as a line too
    close = record["margin"]
    assert f"over L{close['runner_up']} by {100 * close['difference']:+.1f}" in curves.figure._suptitle.get_text()
    # the proxy alone beside a warm head: no curves, the bars, and the head named
    proxy = {**record, "strategy": "proxy", "warm_head": {record["metric"]: 0.5},
             "candidates": {k: {**c, "evaluations": [], "state": "not run"} for k, c in record["candidates"].items()}}  # fmt: skip
    (only,) = plots.auto_layer_figure(proxy).axes
    assert len(only.patches) == 2 and "beside the probe's head" in only.get_title()


def test_rungs_spend_the_budget_over_a_halving_down_to_one_candidate():
    from peftlab.lab.halving import rung_steps

    assert rung_steps(6, 48) == [5, 10]  # 6 candidates x 5 steps, then 3 x 5 more: 45 of 48
    assert rung_steps(12, 48) == [2, 4, 8]  # 12 x 2 + 6 x 2 + 3 x 4 = 48
    assert rung_steps(2, 10) == [5] and rung_steps(1, 10) == [] and rung_steps(6, 3) == [1, 2]


def fake_training(values):
    """A ``train`` for :func:`peftlab.lab.halving.halving` that steps a callback through a training whose
    selection score at each step is ``values(layer, step)`` (or its (score, loss) pair)."""
    from transformers import TrainerControl, TrainerState

    def train(candidate, callback):
        state, control = TrainerState(), TrainerControl()
        for step in range(1, max(callback.pruner.rungs) + 1):
            state.global_step = step
            callback.on_step_end(None, state, control)
            if control.should_evaluate:
                control.should_evaluate = False
                value = values(candidate.layer, step)
                score, loss = value if isinstance(value, tuple) else (value, None)
                metrics = {"eval_score": score} | ({} if loss is None else {"eval_loss": loss})
                callback.on_evaluate(None, state, control, metrics=metrics)
            if control.should_training_stop:
                break
        return state.global_step

    return train


def test_halving_judges_complete_rungs_and_stops_at_the_last_candidate_left():
    import optuna

    from peftlab.lab.halving import Candidate, SynchronousHalving, best_layer, halving

    # Layer 0 leads at the first rung; layers 3 and 5 overtake it at the second: an asynchronous pruner with layer 0
    # run first would have let it through every rung unopposed.
    scores = {0: [0.9, 0.5], 1: [0.1, 0.1], 2: [0.2, 0.2], 3: [0.8, 0.7], 4: [0.3, 0.3], 5: [0.7, 0.95]}
    candidates = [Candidate(layer) for layer in (0, 1, 2, 3, 4, 5)]
    study = optuna.create_study(direction="maximize", pruner=SynchronousHalving([5, 10, 20]))
    halving(study, candidates, "score", fake_training(lambda layer, step: scores[layer][step // 5 - 1]))
    assert study.best_trial.params["layer"] == 5 == best_layer(study)
    assert {c.layer: (c.state, c.steps) for c in candidates} == {
        0: ("pruned", 10), 1: ("pruned", 5), 2: ("pruned", 5), 3: ("pruned", 10), 4: ("pruned", 5), 5: ("complete", 10)
    }  # fmt: skip
    assert sum(c.steps for c in candidates) == 45  # 6 x 5 + 3 x 5: the winner stops as soon as it is alone


def test_equal_scores_are_told_apart_by_the_selection_loss():
    import optuna

    from peftlab.lab.halving import Candidate, SynchronousHalving, best_layer, halving

    # Every candidate predicts one class (a Matthews correlation of 0) at both rungs; only the loss separates them.
    loss = {0: 0.61, 1: 0.60, 2: 0.59, 3: 0.62, 4: 0.58, 5: 0.63}
    candidates = [Candidate(layer) for layer in (5, 4, 3, 2, 1, 0)]  # the proxy's turn order: upper layers first
    study = optuna.create_study(direction="maximize", pruner=SynchronousHalving([5, 10]))
    halving(study, candidates, "score", fake_training(lambda layer, step: (0.0, loss[layer] - step / 1000)))
    assert {c.layer for c in candidates if c.steps == 10} == {4, 2, 1}  # the three lowest losses went on
    assert {c.layer: c.state for c in candidates if c.state == "complete"} == {4: "complete"}
    assert best_layer(study) == 4  # before, six ties: every candidate went on, and the first in turn order won
    assert candidates[1].evaluations[0] == {"step": 5, "eval_score": 0.0, "eval_loss": pytest.approx(0.575)}


def test_a_failing_candidate_stops_the_halving_with_its_error():
    import optuna

    from peftlab.lab.halving import Candidate, SynchronousHalving, halving

    def values(layer, step):
        if layer == 2 and step == 10:
            raise RuntimeError("candidate 2 broke")
        return float(layer)

    study = optuna.create_study(direction="maximize", pruner=SynchronousHalving([5, 10]))
    with pytest.raises(RuntimeError, match="candidate 2 broke"):
        halving(study, [Candidate(layer) for layer in range(4)], "score", fake_training(values))


def test_turns_keep_each_threads_random_stream_as_if_it_ran_alone():
    import threading

    import torch

    from peftlab.lab.halving import Turns

    def draws(seed, turns=None, name=None):
        out = []
        if turns:
            turns.take(name)
        torch.manual_seed(seed)
        for _ in range(3):
            out.append(torch.rand(2))
            if turns:
                turns.hand_over(name)
                turns.take(name)
        if turns:
            turns.hand_over(name, leave=True)
        return torch.cat(out)

    alone = {name: draws(seed) for name, seed in (("a", 1), ("b", 2))}
    turns, together = Turns(["a", "b"]), {}
    threads = [threading.Thread(target=lambda n=n, s=s: together.__setitem__(n, draws(s, turns, n)))
               for n, s in (("a", 1), ("b", 2))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.equal(together["a"], alone["a"]) and torch.equal(together["b"], alone["b"])


def test_auto_layer_check_compares_auto_with_the_best_layer_in_seed_stds(tmp_path):
    """scripts/auto_layer_check.py on made-up runs: layer 1 is best (70 and 72 over two seeds, std 1.41); auto chose
    layer 1 once and layer 0 once (66 there), the proxy layer 0 twice."""
    import csv
    import subprocess
    import sys

    from conftest import REPO

    scores = {0: {42: 0.66, 43: 0.66}, 1: {42: 0.70, 43: 0.72}}
    cpu = {0: 20.0, 1: 10.0}
    rows = []

    def add(variant, layer, seed, score, results, task="mrpc"):
        folder = tmp_path / task / variant / str(layer) / str(seed)
        folder.mkdir(parents=True)
        (folder / "all_results.json").write_text(json.dumps(results))
        rows.append({"sweep": "check", "task": task, "variant": variant, "layer": layer, "seed": seed,
                     "score": score, "output_dir": str(folder)})  # fmt: skip

    for layer, by_seed in scores.items():
        for seed, score in by_seed.items():
            add("adapter", layer, seed, score, {"cpu_seconds": cpu[layer]})
    # seed 42 ran on a busier machine (its final training took 20 CPU s, not its fixed run's 10): 60 s in all, 40 of
    # them choosing, 3 final trainings; seed 43: 30 s, 10 choosing, 1.5 final trainings
    for seed, layer, whole, choice in ((42, 1, 60.0, 40.0), (43, 0, 30.0, 10.0)):
        record = {"chosen_layer": layer, "proxy_choice": 0, "selection_cpu_seconds": choice}
        add("adapter_auto", "", seed, scores[layer][seed], {"cpu_seconds": whole, "auto_layer": record})
        # another auto variant (e.g. --auto_warm_head) gets a row of its own: it chose layer 1 both times
        # its records keep the candidates: at the first rung layer 1 led with seed 42 (the dev order: rho +1) and
        # layer 0 with seed 43 (rho -1), so the rung agrees with dev 0.00 on average; the proxy ranks layer 1 first
        # with both seeds (+1.00)
        first = {0: 0.6 if seed == 42 else 0.8, 1: 0.7}
        candidates = {str(layer): {"evaluations": [{"step": 5, "eval_accuracy": first[layer]}],
                                   "proxy_gradient_norm": 1.0 + layer} for layer in (0, 1)}  # fmt: skip
        warm = {"chosen_layer": 1, "proxy_choice": 1, "selection_cpu_seconds": 10.0, "metric": "eval_accuracy",
                "greater_is_better": True, "candidates": candidates}  # fmt: skip
        add("adapter_auto_warm", "", seed, scores[1][seed], {"cpu_seconds": 20.0, "auto_layer": warm})
    # RTE has one seed so far: no std to measure in, so its cell is shown but neither judged nor counted
    for layer in (0, 1):
        add("adapter", layer, 42, 0.5 + layer / 100, {"cpu_seconds": 10.0}, task="rte")
    record = {"chosen_layer": 0, "proxy_choice": 0, "selection_cpu_seconds": 5.0}
    add("adapter_auto", "", 42, 0.5, {"cpu_seconds": 15.0, "auto_layer": record}, task="rte")
    with open(tmp_path / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    proc = subprocess.run([sys.executable, "scripts/auto_layer_check.py", str(tmp_path / "runs.csv"), "--sweep", "check",
                           "--out", str(tmp_path / "table"), "--reference", "adapter=0"], cwd=REPO, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| mrpc"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # best L1 71.0 ± 1.4; auto 70 (seed 42, L1) and 66 (seed 43, L0): 68.0 ± 2.8, 2.12 std below; costs 3 and 1.5 of
    # its own final training (its layer's run), 3 x 10 / 15 and 1.5 x 20 / 15 = 2 of the mean run, 2 / 2 of the
    # sweep; the proxy's layer 0 gives 66.0, 3.54 below; the top layer is the best one here
    assert cells[2:11] == ["L1", "71.0 ± 1.4", "68.0 ± 2.8", "2.12", "L1,L0", "2.00x", "2.25x", "1.00x", "66.0 (3.54)"]
    # no candidates in these records: no rank agreement to show; layer 0's 66 is 3.54 std below
    # each seed orders the layers as the other does (L1 above L0): seed ~ seeds +1.00; a sweep of seed 43 picks L1
    # for seed 42 (70) and one of seed 42 picks L1 for seed 43 (72): 71.0, the best layer's mean; the reference layer
    # (--reference adapter=0) scores 66.0, 3.54 below
    assert cells[11:] == [
        "L1: 71.0 (0.00)",
        "71.0 (0.00)",
        "L0: 66.0 (3.54)",
        "1/2",
        "0/2",
        "-",
        "-",
        "+1.00",
        "1/2",
        "42,43",
    ]
    warm_row = next(line for line in proc.stdout.splitlines() if line.startswith("| mrpc | adapter (auto_warm)"))
    warm_cells = [c.strip() for c in warm_row.strip("|").split("|")]
    assert warm_cells[4:7] == ["71.0 ± 1.4", "0.00", "L1,L1"] and warm_cells[16:18] == ["+0.00", "+1.00"]
    assert (
        "auto_warm (variants <method>_auto_warm): within one seed standard deviation of the best layer in 1 of 1 "
        "task-method cells; its proxy alone: 1 of 1" in proc.stdout
    )
    assert "in 5 of 5 runs" in proc.stdout
    rte = [c.strip() for c in next(line for line in proc.stdout.splitlines() if line.startswith("| rte")).split("|")]
    # one seed: no other seed's sweep to take a layer from
    assert (
        rte[6] == "-"
        and rte[11:15] == ["50.0 (-)", "L1: 51.0 (-)", "-", "L0: 50.0 (-)"]
        and rte[17:22] == ["-", "-", "-", "-", "42"]
    )
    assert (
        "auto: within one seed standard deviation of the best layer in 0 of 1 task-method cells; its proxy alone: 0 of "
        "1 (1 more with one seed so far, not counted)." in proc.stdout
    )
    assert "No choice at all, the top layer: 1 of 1; a layer drawn at random: 0.5 of 1 expected." in proc.stdout
    assert (
        "A whole layer sweep of another seed (2 runs, the layer best on its dev set taken): 1 of 1 (adapter on 1 of 1 "
        "tasks)." in proc.stdout
    )
    # the reference layer costs its own runs only: 20 CPU s against a mean run of 15
    assert (
        "The reference layers, fixed beforehand (adapter L0): 0 of 1 (adapter on 0 of 1 tasks), at 1.33-1.33x one run."
        in proc.stdout
    )
    # the targets: one task of five is in, so nothing is decided yet for either (auto could still pass 4 of 5; its
    # cost, 2.00x, is within the 2x)
    assert (
        "Targets for auto (within one std on at least 4 of 5 tasks for each method, at most 2x one run in every cell): "
        "adapter within on 0 of 1 tasks; cost 2.00-2.00x one run: open." in proc.stdout
    )
    assert "adapter within on 1 of 1 tasks; cost 1.33-1.33x one run: open." in proc.stdout


def test_auto_with_a_loss_as_the_selection_metric_keeps_the_lowest(tiny_bert, rte_distinct, tmp_path):
    results = run(tiny_bert, rte_distinct, tmp_path / "o", "--method", "adapter@auto", "--metric_for_best_model",
                  "eval_loss", "--auto_layers", "0-1")  # fmt: skip
    auto = results["auto_layer"]
    assert auto["metric"] == "eval_loss" and auto["greater_is_better"] is False
    last = {int(layer): c["evaluations"][-1]["eval_loss"] for layer, c in auto["candidates"].items()}
    assert auto["chosen_layer"] == min(last, key=last.get)


def test_a_stopped_auto_run_resumes_its_final_training_with_the_layer_it_chose(
    tiny_bert, rte_distinct, tmp_path, monkeypatch
):
    """--resumable (what sweeps use): the checkpoints of an auto run's final training carry its choice, so the run
    started again resumes there without choosing again (the choice is up to 1.5 runs' worth of training) and ends as
    the run that never stopped. A changed setting of the choice is refused like any other changed argument."""
    from peftlab.lab import stages as stages_module

    args = ("--method", "adapter@auto", "--bottleneck_dim", "2", "--resumable", "true")
    whole = run(tiny_bert, rte_distinct, tmp_path / "whole", *args)
    kill_after_checkpoint(monkeypatch, step=10)  # the final training's epoch 1 of 2 (candidates save nothing)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_bert, rte_distinct, tmp_path / "killed", *args)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"other arguments \(auto_budget 0\.5 there, 0\.25 here\)"):
        run(tiny_bert, rte_distinct, tmp_path / "killed", *args, "--auto_budget", "0.25")

    def choose_again(*_args, **_kwargs):
        raise AssertionError("the layer was chosen again")

    monkeypatch.setattr(stages_module, "choose_layer", choose_again)
    steps = count_training_steps(monkeypatch)
    (tmp_path / "killed" / "auto_layer_k1ll3d").mkdir()  # the candidates' scratch, left by a start killed in its choice
    resumed = run(tiny_bert, rte_distinct, tmp_path / "killed", *args)
    assert len(steps) == 10 and resumed["resumed"]["step"] == 10  # epoch 2 only
    assert not list((tmp_path / "killed").glob("auto_layer_*"))

    def choice(auto):
        scores = {k: [(e["step"], e["eval_loss"]) for e in c["evaluations"]] for k, c in auto["candidates"].items()}
        return auto["chosen_layer"], auto["proxy_choice"], auto["selection_steps"], scores

    assert choice(resumed["auto_layer"]) == choice(whole["auto_layer"])
    assert resumed["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-6)
    # the cost counts the choice made before the stop and both starts' training
    assert resumed["auto_layer"]["cost_in_runs"] > 1 and resumed["auto_layer"]["selection_seconds"] > 0


@pytest.fixture
def warm_spies(monkeypatch):
    """(probes, starts): the heads the warm head's probe returns, and each candidate's head when the proxy is
    measured on it (once it is built, before it trains)."""
    from peftlab.lab import autolayer

    probes, starts = [], []
    real_probe, real_norm = autolayer.probe_head, autolayer.gradient_norm

    def probe_head(trainer):
        head, record = real_probe(trainer)
        probes.append(head)
        return head, record

    def gradient_norm(trainer, batches=4):
        starts.append({k: v.clone() for k, v in trainer.model.head.state_dict().items()})
        return real_norm(trainer, batches)

    monkeypatch.setattr(autolayer, "probe_head", probe_head)
    monkeypatch.setattr(autolayer, "gradient_norm", gradient_norm)
    return probes, starts


def test_a_warm_head_starts_every_candidate_from_the_probes_head_and_leaves_the_final_run_alone(
    tiny_bert, rte_distinct, tmp_path, warm_spies
):
    probes, starts = warm_spies
    cold = run(tiny_bert, rte_distinct, tmp_path / "cold", "--method", "adapter@auto", "--bottleneck_dim", "2",
               "--auto_warm_head", "false")  # fmt: skip
    assert not probes and "warm_head" not in cold["auto_layer"] and len(starts) == 2
    assert cold["auto_layer"]["options"]["auto_warm_head"] is False
    new_head = starts[0]
    starts.clear()
    # the warm head is the default: no flag
    warm = run(tiny_bert, rte_distinct, tmp_path / "warm", "--method", "adapter@auto", "--bottleneck_dim", "2")
    auto = warm["auto_layer"]
    assert auto["options"] == {"auto_layers": "all", "auto_layer_strategy": "halving",
                               "auto_selection_fraction": 0.2, "auto_budget": 0.5, "auto_warm_head": True}  # fmt: skip
    assert len(probes) == 1 and len(starts) == 2  # one probe, then both candidates start from its head
    assert all(torch.equal(start[k], probes[0][k]) for start in starts for k in start)
    assert any(not torch.equal(probes[0][k], new_head[k]) for k in new_head)  # the probe trained its head
    assert auto["warm_head"]["steps"] == auto["budget"]["final_run_steps"] and "eval_loss" in auto["warm_head"]
    # the final training starts from a new head: it is the fixed-layer run at the chosen layer (without the cache,
    # which an auto run over every layer, layer 0 among them, does not use by default)
    assert (
        json.loads((tmp_path / "warm" / "run_config.json").read_text())["training_args"]["cache_frozen_prefix"] is False
    )
    fixed = run(tiny_bert, rte_distinct, tmp_path / "fixed", "--method", f"adapter@{auto['chosen_layer']}",
                "--bottleneck_dim", "2", "--cache_frozen_prefix", "false")  # fmt: skip
    assert warm["eval_loss"] == fixed["eval_loss"]


def test_the_proxy_alone_with_a_warm_head_measures_its_gradients_beside_the_probes_head(
    tiny_bert, rte_distinct, tmp_path, warm_spies
):
    probes, starts = warm_spies
    args = ("--method", "adapter@auto", "--bottleneck_dim", "2", "--auto_layer_strategy", "proxy")
    cold = run(tiny_bert, rte_distinct, tmp_path / "cold", *args, "--auto_warm_head", "false")["auto_layer"]
    assert not probes and "warm_head" not in cold
    starts.clear()
    warm = run(tiny_bert, rte_distinct, tmp_path / "warm", *args)["auto_layer"]  # the default: a warm head
    assert len(probes) == 1 and len(starts) == 2
    assert all(torch.equal(start[k], probes[0][k]) for start in starts for k in start)
    assert warm["selection_steps"] == 0 and warm["chosen_layer"] == warm["proxy_choice"]  # no candidate trains
    assert warm["warm_head"]["steps"] == warm["budget"]["final_run_steps"]
    norms = {layer: c["proxy_gradient_norm"] for layer, c in warm["candidates"].items()}
    assert norms != {layer: c["proxy_gradient_norm"] for layer, c in cold["candidates"].items()}


def test_compare_auto_runs_counts_what_changed_between_two_copies_of_the_runs(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    def record(root, seed, layer, score, proxy, separable=None):
        candidates = {"0": {"evaluations": [{"step": 5, "eval_accuracy": score}], "proxy_gradient_norm": proxy}}
        auto = {"chosen_layer": layer, "metric": "eval_accuracy", "candidates": candidates}
        if separable is not None:
            auto["margin"] = {"runner_up": 1 - layer, "difference": 0.02, "interval_90": [0.01 if separable else -0.01,
                              0.03], "separable": separable}  # fmt: skip
        write(root / "rte" / "adapter_auto" / f"seed{seed}" / "all_results.json", json.dumps({"auto_layer": auto}))

    record(tmp_path / "old", 42, 1, 0.5, 0.1)
    record(tmp_path / "new", 42, 1, 0.5, 0.1)
    record(tmp_path / "old", 43, 1, 0.5, 0.1)
    record(tmp_path / "new", 43, 0, 0.6, 0.1)  # another score at a rung, another choice
    record(tmp_path / "new", 44, 0, 0.6, 0.1)  # not in the old copy: not compared
    proc = subprocess.run([sys.executable, "scripts/compare_auto_runs.py", str(tmp_path / "old"), str(tmp_path / "new")],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rte/adapter_auto/seed43: layer 1 -> 0; choice DIFFER, scores DIFFER, proxies" in proc.stdout
    assert proc.stdout.rstrip().endswith(
        "2 runs in both: the same choice in 1, the same selection-split scores in 1, the same proxies in 2"
    )
    # the new copy records margins, and the old root holds the fixed-layer runs: L1 is best (70 and 72, std 1.41);
    # seed 42's choice (L1, 70: 0.71 std below) was told apart, seed 43's (L0, 66: 3.54 below) was not
    for layer, by_seed in {0: {42: 0.66, 43: 0.66}, 1: {42: 0.70, 43: 0.72}}.items():
        for seed, score in by_seed.items():
            write(tmp_path / "old" / "rte" / "adapter" / f"L{layer}" / f"seed{seed}" / "all_results.json",
                  json.dumps({"eval_accuracy": score}))  # fmt: skip
    record(tmp_path / "new", 42, 1, 0.5, 0.1, separable=True)
    record(tmp_path / "new", 43, 0, 0.6, 0.1, separable=False)
    proc = subprocess.run([sys.executable, "scripts/compare_auto_runs.py", str(tmp_path / "old"), str(tmp_path / "new")],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "margin over L0: +2.0 (+1.0 to +3.0), told apart; the chosen layer's run 0.71 stds below" in proc.stdout
    assert "margin over L1: +2.0 (-1.0 to +3.0), not told apart; the chosen layer's run 3.54 stds below" in proc.stdout
    assert proc.stdout.rstrip().endswith(
        "2 with a margin and fixed-layer runs: told apart in 1, of which 1 within one std of the best layer; not told "
        "apart in 1, of which 0 within"
    )


def test_auto_layer_checks_verdict_on_the_targets_is_met_not_met_or_open():
    from conftest import load_script

    check = load_script("auto_layer_check")

    def cells(method, belows, cost=1.5):
        return [{"method": method, "below": b, "vs_run": cost} for b in belows]

    def state(judged):
        return check.verdict("", judged, ["adapter", "lora"]).rsplit(": ", 1)[1]

    four_of_five = [0.1, 0.5, 0.9, 1.0, 3.0]
    assert state(cells("adapter", four_of_five) + cells("lora", four_of_five)) == "met."
    assert state(cells("adapter", four_of_five) + cells("lora", four_of_five[:4], 2.1) + cells("lora", [3.0])) == (
        "not met."  # one cell above 2x one run
    )
    assert state(cells("adapter", four_of_five) + cells("lora", [1.5, 2.0, 0.0, 0.0, 0.0])) == "not met."  # 3 of 5
    assert state(cells("adapter", [1.5, 0.0, 0.0]) + cells("lora", [0.0])) == "open."  # 2 more may pass
    assert state(cells("adapter", [1.5, 1.5]) + cells("lora", [0.0])) == "not met."  # at best 3 of 5
    assert state(cells("adapter", [1.5, 1.5, float("nan")]) + cells("lora", [0.0])) == "not met."  # nan: one seed
    assert state(cells("adapter", [1.5, float("nan"), float("nan")]) + cells("lora", [0.0])) == "open."
