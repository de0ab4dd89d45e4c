"""``--protocol paper`` gives each run exactly the paper's settings (docs/paper_protocol.md), explicit flags win, and
the GPU sweep files reproduce the paper's runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from peftlab.errors import ConfigError
from peftlab.protocols import apply_protocol
from peftlab.run import main
from peftlab.sweep import effective_args, expand, load_sweep

# The paper's table, written out here independently of peftlab/protocols.py (docs/paper_protocol.md cites each).
SHARED = {
    "per_device_train_batch_size": 16, "per_device_eval_batch_size": 8, "warmup_steps": 0.06, "weight_decay": 0.1,
    "eval_strategy": "epoch", "greater_is_better": True,
}  # fmt: skip
ROWS = {
    # method: (learning rate, epochs on RTE / on MRPC, early-stopping patience, pooling, method options)
    "full": (2e-5, 3, 3, 10, "cls", {}),
    "probe": (2e-3, 10, 5, 5, "mean", {}),
    "adapter": (2e-3, 10, 5, 5, "mean", {"bottleneck_dim": 2, "adapter_activation": "tanh", "adapter_init": "model",
                                          "adapter_residual_norm": True, "adapter_scaling": 1.0}),
    "lora": (2e-3, 10, 5, 5, "mean", {"lora_rank": 1, "lora_alpha": 1.0, "lora_targets": "query,key",
                                       "lora_init": "normal", "lora_dropout": 0.0}),
    "prefix": (2e-4, 10, 5, 5, "mean", {"prefix_length": 2, "prefix_reparam": False}),
    "bitfit": (2e-4, 10, 5, 5, "mean", {"bitfit_targets": "query,ffn_in", "bitfit_offset": True}),
    "ffn": (2e-4, 10, 5, 5, "mean", {"train_extra_roles": "attn_out,attn_norm,ffn_norm"}),
}  # fmt: skip


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
