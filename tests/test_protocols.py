"""``--protocol paper`` gives each run exactly the paper's settings (docs/paper_protocol.md), explicit flags win, and
the GPU sweep files reproduce the paper's runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import REPO

from peftlab.errors import ConfigError
from peftlab.lab.protocols import apply_protocol, describe, paper_method_options
from peftlab.lab.run import main
from peftlab.lab.sweep import load_sweep
from peftlab.lab.sweepfile import effective_args, expand
from peftlab.methods import METHODS, Method, PeftArguments

# The paper's values, written out here independently of the method classes (docs/paper_protocol.md cites each):
# the learning rate of the method and the head (None: a script argument there, ours below) and method options.
PAPER_RATE = {"full": 2e-5, "adapter": 2e-3, "lora": 2e-3, "prefix": 2e-4, "bitfit": 2e-4, "ffn": None, "probe": None}
PAPER_OPTIONS = {
    "adapter": {"bottleneck_dim": 2, "adapter_activation": "tanh", "adapter_init": "model",
                "adapter_residual_norm": True, "adapter_layernorm_affine": True, "adapter_scaling": 1.0,
                "adapter_layernorm": False},
    "lora": {"lora_rank": 1, "lora_alpha": 1.0, "lora_targets": "query,key", "lora_init": "normal", "lora_dropout": 0.0},
    "prefix": {"prefix_length": 2, "prefix_reparam": False},
    "bitfit": {"bitfit_targets": "query,ffn_in", "bitfit_offset": True},
    "ffn": {"train_extra_roles": "attn_out,attn_norm,ffn_norm"},
}  # fmt: skip
# Ours: the rates the paper's scripts leave to the command line, and the methods the paper does not have. A
# method's class must mark these as ours (paper_ours names "learning_rate" and/or "options").
OUR_RATE = {"probe": 2e-3, "ffn": 2e-4, "attn": 2e-4, "ia3": 3e-3, "vera": 4e-3, "sparse": 2e-3}
OUR_OPTIONS = {
    "ia3": {"ia3_targets": "key,value,ffn_out"},
    "vera": {"vera_rank": 1024, "vera_targets": "query,value", "vera_d_init": 0.1},
}


def schedule(method: str) -> tuple[int, int, int, str]:
    """Epochs on RTE and on MRPC, early-stopping patience and pooling: the paper's rule for full fine-tuning
    (finetune_glue.sh) and for every frozen-backbone method (its PEFT, FFN and probe scripts)."""
    return (3, 3, 10, "cls") if method == "full" else (10, 5, 5, "mean")


# method: (learning rate, epochs on RTE / on MRPC, early-stopping patience, pooling, method options)
ROWS = {
    m: (PAPER_RATE.get(m) or OUR_RATE[m], *schedule(m), PAPER_OPTIONS.get(m) or OUR_OPTIONS.get(m, {}))
    for m in {**PAPER_RATE, **OUR_RATE}
}
SHARED = {
    "per_device_train_batch_size": 16, "per_device_eval_batch_size": 8, "warmup_steps": 0.06, "weight_decay": 0.1,
    "eval_strategy": "epoch", "greater_is_better": True,
}  # fmt: skip


def test_every_registered_method_has_a_paper_preset_that_says_which_values_are_ours():
    assert set(ROWS) == set(METHODS)
    for name, cls in METHODS.items():
        ours = tuple(value for value, table in (("learning_rate", OUR_RATE), ("options", OUR_OPTIONS)) if name in table)
        assert tuple(cls.paper_ours) == ours, name
        values, _ = apply_protocol({"protocol": "paper", "task_name": "rte", "method": name})
        lr, epochs, _, patience, pooling, options = ROWS[name]
        assert values["learning_rate"] == values["head_learning_rate"] == lr, name
        assert (values["num_train_epochs"], values["early_stopping_patience"], values["pooling"]) == (
            epochs, patience, pooling,
        ), name  # fmt: skip
        method_options = {k: v for k, v in values.items() if k in dataclasses.asdict(PeftArguments())}
        assert method_options == {**options, "method": name}, name
    assert "ia3: " in describe("paper") and "(ours: learning_rate, options)" in describe("paper")
    tables = paper_method_options()  # what scripts/bench.py reads
    assert tables["lora"] == PAPER_OPTIONS["lora"] and "probe" not in tables


def test_quick_protocol_rate_follows_whether_the_method_trains_the_backbone():
    for name in METHODS:
        values, _ = apply_protocol({"protocol": "quick", "task_name": "rte", "method": f"{name}@1"})
        assert values["learning_rate"] == values["head_learning_rate"] == (5e-5 if name == "full" else 2e-3), name
        assert values["num_train_epochs"] == 3 and values["per_device_train_batch_size"] == 32


def test_a_method_without_a_paper_preset_is_refused_not_given_a_default(monkeypatch):
    class Unpreset(Method):
        """A method whose class sets no paper_learning_rate."""

        name = "unpreset"

    monkeypatch.setitem(METHODS, "unpreset", Unpreset)
    with pytest.raises(ConfigError, match=r"--protocol paper has no preset for --method 'unpreset' .*; methods with "
                                          r"one: adapter, bitfit"):  # fmt: skip
        apply_protocol({"protocol": "paper", "task_name": "rte", "method": "unpreset@1"})
    values, _ = apply_protocol({"protocol": "quick", "task_name": "rte", "method": "unpreset"})
    assert values["learning_rate"] == 2e-3  # quick's rule: it trains no backbone weight
    assert "unpreset: no paper preset" in describe("paper")
    with pytest.raises(ConfigError, match=r"Unknown method 'nomethod'. Valid methods: adapter"):
        apply_protocol({"protocol": "paper", "task_name": "rte", "method": "nomethod"})


@pytest.mark.parametrize("method", list(ROWS))
def test_paper_protocol_gives_a_run_exactly_the_papers_arguments(tiny_bert, rte_dir, tmp_path, method):
    lr, epochs, _, patience, pooling, options = ROWS[method]
    out = tmp_path / "out"
    results = main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir),
                    "--output_dir", str(out), "--method", f"{method}@1" if method not in ("full", "probe") else method,
                    "--protocol", "paper", "--disable_tqdm", "True"])  # fmt: skip
    config = json.loads((out / "run_config.json").read_text())
    training, peft, model = config["training_args"], config["peft_args"], config["model_args"]
    assert {k: training[k] for k in SHARED} == SHARED
    assert training["learning_rate"] == training["head_learning_rate"] == lr
    assert training["num_train_epochs"] == epochs and training["early_stopping_patience"] == patience
    assert training["metric_for_best_model"] == "accuracy"  # RTE: the paper selects on accuracy
    assert config["model_selection"] == "best evaluation (highest eval_accuracy; kept in memory)"
    assert model["pooling"] == pooling and model["head"] == "mlp"
    assert {k: peft[k] for k in options} == options
    assert config["protocol"]["name"] == "paper" and "learning_rate" in config["protocol"]["preset"]
    # Every epoch was evaluated (16 examples: early stopping can only end it after `patience` epochs without gain).
    evaluations = results["evaluations"]
    assert len(evaluations) == epochs or len(evaluations) > patience
    best = max(e["eval_accuracy"] for e in evaluations)
    assert results["best_evaluation"]["eval_accuracy"] == best == results["eval_accuracy"]


def test_the_papers_selection_metric_per_task_and_mrpcs_five_epochs():
    values, _ = apply_protocol({"protocol": "paper", "task_name": "stsb", "method": "lora@5"})
    assert values["metric_for_best_model"] == "spearmanr" and values["num_train_epochs"] == 10
    values, _ = apply_protocol({"protocol": "paper", "task_name": "cola", "method": "adapter@2"})
    assert values["metric_for_best_model"] == "matthews_correlation"
    values, _ = apply_protocol({"protocol": "paper", "task_name": "mrpc", "method": "prefix@5"})
    assert values["metric_for_best_model"] == "accuracy" and values["num_train_epochs"] == 5


def test_explicit_values_override_the_preset_and_are_not_recorded_as_applied():
    argv = [
        "--protocol",
        "paper",
        "--task_name",
        "rte",
        "--method",
        "lora@5",
        "--learning_rate",
        "1e-3",
        "--lora_rank=4",
    ]
    values, applied = apply_protocol(argv)
    assert values[-len(argv) :] == argv  # the explicit flags come last: argparse keeps the last value
    assert "learning_rate" not in applied and "lora_rank" not in applied and applied["lora_alpha"] == 1.0
    values, applied = apply_protocol({"protocol": "quick", "task_name": "rte", "method": "full", "seed": 3})
    assert values["learning_rate"] == 5e-5 and values["num_train_epochs"] == 3 and values["seed"] == 3
    with pytest.raises(ConfigError, match=r"--protocol 'papers' is not valid; choose one of paper, quick"):
        apply_protocol(["--protocol", "papers"])


GPU_SWEEPS = sorted((REPO / "scripts" / "sweeps" / "gpu").glob("*.json"))


@pytest.mark.parametrize("path", GPU_SWEEPS, ids=[p.stem for p in GPU_SWEEPS])
def test_gpu_sweep_files_are_the_papers_runs(path: Path, tmp_path):
    runs = expand(load_sweep(path), tmp_path)
    assert runs
    model = load_sweep(path)["common"]["model_name_or_path"]
    for run in runs:
        args = effective_args(run.args)
        method = args["method"].split("@")[0]
        lr, rte_epochs, mrpc_epochs, patience, pooling, options = ROWS[method]
        assert args["protocol"] == "paper" and args["model_name_or_path"] == model and args.get("glue_dir") is None
        assert not args.get("cache_frozen_prefix") and "train_split" not in args  # the hub's train splits, dropout
        assert args["learning_rate"] == args["head_learning_rate"] == lr, run.name
        assert args["num_train_epochs"] == (mrpc_epochs if args["task_name"] == "mrpc" else rte_epochs), run.name
        assert args["early_stopping_patience"] == patience and args["per_device_train_batch_size"] == 16
        if "per_pooling" not in json.dumps(load_sweep(path)["variants"]) or method != "probe":
            expected = "cls" if method == "full" or "bert-base" in model else "mean"
            assert args["pooling"] == expected, run.name
        if "layer" not in run.point or run.point["layer"] is None and run.point["bottleneck_dim"] is None:
            layer = {"adapter": "5", "lora": "10", "prefix": "10", "bitfit": "10"}.get(method)
            if layer and "table1" in path.name:
                assert args["method"] == f"{method}@{layer}", run.name
        for key, value in options.items():
            if not (key == "bottleneck_dim" and run.point["bottleneck_dim"] is not None):
                assert args[key] == value, (run.name, key)
