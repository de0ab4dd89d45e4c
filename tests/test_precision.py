"""Mixed precision: what a CPU can check (bf16 autocast, narrow cache dtypes, LoRA's merge on half-precision
weights), and the CUDA checks that run where a GPU is (marked ``gpu``, skipped elsewhere)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from peftlab.cache import CachedCollator, FrozenPrefixCache, cache_datasets, need_of
from peftlab.errors import ConfigError
from peftlab.lab.run import main
from peftlab.methods import PeftArguments
from peftlab.methods.lora import LoraLinear, lora_merged
from peftlab.modeling import HeadConfig, build_classifier

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

METHODS = ["full", "probe", "bitfit@1", "lora@all", "adapter@1", "prefix@1", "ffn@0", "attn@1"]


def run(model, glue, out, *extra):
    return main(["--model_name_or_path", model, "--task_name", "rte", "--glue_dir", str(glue), "--output_dir",
                 str(out), "--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
                 "--pooling", "mean", "--disable_tqdm", "True", *extra])  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_with_bf16_autocast_on_cpu(tiny_bert, rte_dir, tmp_path, method):
    results = run(tiny_bert, rte_dir, tmp_path / "o", "--method", method, "--bf16", "true")
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["eval_loss"])
    config = json.loads((tmp_path / "o" / "run_config.json").read_text())
    assert config["precision"]["training"] == "bf16 autocast" and config["training_args"]["bf16"] is True


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("bfloat16", 2e-2), ("float16", 2e-3)])
def test_the_cache_serves_a_stated_dtype_and_matches_no_cache_within_tolerance(
    tiny_bert_no_dropout, rte_dir, tmp_path, dtype, tolerance
):
    """fp32 is exact (1e-5: float summation order); bf16 keeps 8 bits of mantissa, fp16 11."""
    plain = run(tiny_bert_no_dropout, rte_dir, tmp_path / "plain", "--method", "adapter@1", "--head_dropout", "0")
    cached = run(tiny_bert_no_dropout, rte_dir, tmp_path / "cached", "--method", "adapter@1", "--head_dropout", "0",
                 "--cache_frozen_prefix", "true", "--frozen_cache_dir", str(tmp_path / "cache"), "--cache_dtype", dtype)  # fmt: skip
    assert cached["eval_loss"] == pytest.approx(plain["eval_loss"], abs=tolerance)
    from safetensors import safe_open

    (path,) = {p for p in (tmp_path / "cache").glob("*.safetensors")}
    with safe_open(str(path), "pt") as handle:
        assert str(handle.get_tensor("data").dtype) == f"torch.{dtype}"
    config = json.loads((tmp_path / "cached" / "run_config.json").read_text())
    assert config["precision"]["frozen_prefix_cache"] == f"{dtype} (filled in fp32)"


ADDS_ITS_OWN = ["probe", "lora@all", "adapter@1", "prefix@1"]


@pytest.mark.parametrize("method", ADDS_ITS_OWN)
@pytest.mark.parametrize("cache", ["false", "true"])
def test_a_bf16_backbone_trains_a_methods_own_float32_parameters(tiny_bert, rte_dir, tmp_path, method, cache):
    out = tmp_path / "o"
    results = run(tiny_bert, rte_dir, out, "--method", method, "--bf16", "true", "--model_dtype", "bfloat16",
                  "--cache_frozen_prefix", cache, "--frozen_cache_dir", str(tmp_path / "cache"))  # fmt: skip
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["eval_loss"])
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))  # what trained: the method's parameters and the head
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}
    config = json.loads((out / "run_config.json").read_text())
    assert config["model_args"]["model_dtype"] == "bfloat16"
    if cache == "true":
        assert config["precision"]["frozen_prefix_cache"] == "float32 (filled in bf16)"


@pytest.mark.parametrize("method", ["full", "bitfit@1", "ffn@0", "attn@1"])
def test_a_half_backbone_refuses_methods_that_train_its_own_weights(
    tiny_bert, rte_dir, tmp_path, method, no_model_loading
):
    with pytest.raises(ConfigError, match=r"--model_dtype bfloat16 with --method .*trains the backbone's own weights"):
        run(tiny_bert, rte_dir, tmp_path / "o", "--method", method, "--bf16", "true", "--model_dtype", "bfloat16")
    assert not (tmp_path / "o").exists()


def test_a_half_backbone_needs_the_matching_autocast(tiny_bert, rte_dir, tmp_path, no_model_loading):
    with pytest.raises(ConfigError, match="--model_dtype bfloat16 needs --bf16"):
        run(tiny_bert, rte_dir, tmp_path / "o", "--method", "adapter@1", "--model_dtype", "bfloat16")
    with pytest.raises(ConfigError, match="--model_dtype float16 needs --fp16"):
        run(tiny_bert, rte_dir, tmp_path / "p", "--method", "adapter@1", "--model_dtype", "float16", "--bf16", "true")
    with pytest.raises(ValueError, match="--model_dtype 'int8' is not valid; choose one of float32, bfloat16, float16"):
        run(tiny_bert, rte_dir, tmp_path / "q", "--method", "adapter@1", "--model_dtype", "int8")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lora_merge_on_half_precision_weights_is_close_and_restores_them_exactly(tiny_bert, dtype):
    torch.manual_seed(0)
    model = build_classifier(tiny_bert, HeadConfig(2, pooling="mean"), PeftArguments(method="lora@all"))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.lora_B.weight.normal_(std=0.05)
    model = model.to(dtype).eval()
    ids = torch.randint(5, 1000, (3, 9))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        unmerged = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        with lora_merged(model):
            merged = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
    assert torch.allclose(merged, unmerged, atol=5e-2)  # half-precision rounding of W + BA
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # bit for bit


@gpu
@pytest.mark.parametrize("precision", ["--fp16", "--bf16"])
def test_cuda_runs_with_the_cache_in_half_precision_keep_everything_on_the_gpu(tiny_bert, rte_dir, tmp_path, precision):
    results = run(tiny_bert, rte_dir, tmp_path / "o", "--method", "adapter@1", precision, "true",
                  "--cache_frozen_prefix", "true", "--frozen_cache_dir", str(tmp_path / "cache"),
                  "--cache_dtype", "float16" if precision == "--fp16" else "bfloat16")  # fmt: skip
    assert math.isfinite(results["eval_loss"])
    assert json.loads((tmp_path / "o" / "run_config.json").read_text())["device"] == "cuda"


@gpu
@pytest.mark.parametrize("precision,dtype", [("--fp16", "float16"), ("--bf16", "bfloat16")])
@pytest.mark.parametrize("method", ["lora@all", "prefix@1"])
def test_cuda_runs_on_a_half_precision_backbone(tiny_bert, rte_dir, tmp_path, precision, dtype, method):
    """fp16 brings the gradient scaler: it must meet float32 trained parameters only (a frozen fp16 backbone)."""
    results = run(tiny_bert, rte_dir, tmp_path / "o", "--method", method, precision, "true", "--model_dtype", dtype)
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["eval_loss"])


@gpu
def test_cached_inputs_and_prefix_masks_follow_the_model_to_the_gpu(tiny_bert, tmp_path):
    import datasets
    from transformers import AutoTokenizer

    from peftlab.lab.workspace import tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    data = tokenize(datasets.Dataset.from_dict({"sentence": ["a b c", "d e"], "label": [0, 1], "idx": [0, 1]}),
                    ("sentence",), tokenizer, 16, False)  # fmt: skip
    for method in ("prefix@1", "probe"):
        model = build_classifier(tiny_bert, HeadConfig(2, pooling="mean"), PeftArguments(method=method), True).cuda()
        wrapped = cache_datasets(model, {"train": data}, tokenizer, FrozenPrefixCache(model.backbone, tmp_path))
        batch = {k: v.cuda() for k, v in CachedCollator(tokenizer)([wrapped["train"][0], wrapped["train"][1]]).items()}
        assert model(**batch).logits.device.type == "cuda"
        assert need_of(model) is not None


def _compare_precision():
    from conftest import load_script

    return load_script("compare_precision")


def test_compare_precisions_chance_count_matches_independent_draws():
    """The expected failures for independent runs match a simulation of them; identical runs fail none."""
    import random

    check = _compare_precision()
    rng = random.Random(0)
    sigma, seeds, trials = 1.0, [42, 43, 44], 600
    reference = {("t", f"row{i}", s): rng.gauss(0, sigma) for i in range(trials) for s in seeds}
    independent = {k: rng.gauss(0, sigma) for k in reference}
    rounded = {k: v + 1e-3 for k, v in reference.items()}
    cells = check.compare(reference, independent)
    failed = sum(not c["equal"] for c in cells)
    assert abs(failed - check.chance_failures(cells)) < 0.1 * trials, (failed, check.chance_failures(cells))
    assert 0.2 * trials < failed < 0.45 * trials  # about a third at sigma 1 with 3 seeds
    assert sum(not c["equal"] for c in check.compare(reference, rounded)) == 0


def test_compare_precisions_cost_table_pairs_runs_per_epoch():
    check = _compare_precision()
    rows = [
        {"sweep": sweep, "task": "rte", "variant": "adapter", "seed": seed, "epochs_run": epochs, "cpu_seconds": cpu}
        for sweep, cpu, epochs in (("ref", 200.0, 10), ("other", 50.0, 5))
        for seed in (42, 43)
    ]
    rows.append({"sweep": "other", "task": "rte", "variant": "adapter", "seed": 44, "epochs_run": 5, "cpu_seconds": None})  # fmt: skip
    reference, other = check.cpu_per_epoch(rows, "ref", ["rte"]), check.cpu_per_epoch(rows, "other", ["rte"])
    assert reference == {("rte", "adapter", 42): 20.0, ("rte", "adapter", 43): 20.0}
    assert set(other) == set(reference)  # the run without its CPU time is left out
    text = check.cost_markdown(reference, other)
    assert "| adapter | 2 | 2.00x |" in text and "All 2 paired runs: 2.00x" in text


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_warns_that_float32_is_faster(monkeypatch, caplog, tmp_path, native):
    from peftlab.lab import args as args_module

    monkeypatch.setattr(args_module, "cpu_has_fast_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger=args_module.logger.name):
        args_module.GlueTrainingArguments(output_dir=str(tmp_path), bf16=True)
    warned = [r.getMessage() for r in caplog.records if "without native bf16" in r.getMessage()]
    assert bool(warned) is not native
    if warned:
        assert "Leave --bf16 out" in warned[0]
