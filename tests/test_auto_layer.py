"""``--target_layers auto``: the layer is chosen on a split of the training set by successive halving through
Optuna, then trained on the whole training set; every candidate's scores, budget and the split are recorded."""

from __future__ import annotations

import json

import pytest
from conftest import write

from peftlab.errors import ConfigError
from peftlab.run import main


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
    extra = ["--cache_frozen_prefix", "true", "--frozen_cache_dir", str(tmp_path / "cache")] if cache else []
    results = run(tiny_bert, rte_distinct, tmp_path / "o", "--method", "adapter", "--target_layers", "auto",
                  "--bottleneck_dim", "2", *extra)  # fmt: skip
    auto = results["auto_layer"]
    assert auto["chosen_layer"] in (0, 1) and set(auto["candidates"]) == {"0", "1"}
    assert auto["selection_split"].startswith("8 examples held out of the 40 training examples")
    assert results["train_samples"] == 40 and results["eval_samples"] == 12  # then the whole train set, dev as usual
    states = {c["state"] for c in auto["candidates"].values()}
    assert "complete" in states and states <= {"complete", "pruned"}
    assert all(c["evaluations"] and c["proxy_gradient_norm"] > 0 for c in auto["candidates"].values())
    assert auto["budget"]["most_steps_per_candidate"] >= auto["budget"]["rung_steps"] >= 1
    assert auto["cost_in_runs"] > 1
    config = json.loads((tmp_path / "o" / "run_config.json").read_text())
    assert config["peft_args"]["method"] == f"adapter@{auto['chosen_layer']}" and config["auto_layer"] == auto
    assert not list((tmp_path / "o").glob("auto_layer_*"))  # the candidates' scratch folders are gone


def test_auto_with_the_proxy_alone_trains_no_candidate(tiny_bert, rte_distinct, tmp_path):
    results = run(tiny_bert, rte_distinct, tmp_path / "o", "--method", "lora@auto", "--auto_layer_strategy", "proxy")
    auto = results["auto_layer"]
    assert auto["chosen_layer"] == auto["proxy_choice"] and auto["selection_steps"] == 0


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

    run(tiny_bert, rte_distinct, tmp_path / "o", "--method", "bitfit", "--target_layers", "auto")
    out = tmp_path / "candidates.png"
    proc = subprocess.run([sys.executable, "scripts/plots.py", "--auto_layer", str(tmp_path / "o"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
