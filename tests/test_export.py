"""The export in HuggingFace peft's format (``<run>/hf_peft``) predicts: where the run's pooling and head are the
architecture's own ``*ForSequenceClassification`` head, ``peft.AutoPeftModelForSequenceClassification`` loads it
offline, head included, and gives the run's own logits; elsewhere the adapter is written alone and the export
says why. The base model it names resolves (a local folder by its path, a hub name as it is), and a reloaded run
is in eval mode."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_methods import TINY_CONFIGS, batch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

import peftlab
from peftlab.methods import PeftArguments
from peftlab.methods.hf_export import NOTES_NAME, resolvable_base
from peftlab.modeling import BUNDLED_MODEL, HeadConfig, SequenceClassifier, pool

peft = pytest.importorskip("peft")

FAST = ["--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "True", "--seed", "7",
        "--learning_rate", "5e-3"]  # fmt: skip


def train(tiny_bert: str, rte_dir: Path, out: Path, method: str, pooling: str, head: str = "linear") -> Path:
    from peftlab.lab.run import main

    main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir), "--output_dir",
          str(out), "--method", method, "--pooling", pooling, "--head", head, *FAST])  # fmt: skip
    return out


def rte_batch(tokenizer_path: str) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    pairs = [("The cat sat on the mat.", "A cat is sitting."), ("Paris is the capital of France.", "Berlin is big.")]
    return dict(tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt"))


def saved_keys(export: Path) -> list[str]:
    with safe_open(str(export / "adapter_model.safetensors"), "pt") as f:
        return sorted(f.keys())


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_a_run_with_berts_own_head_exports_whole_and_predicts_as_the_run(tiny_bert, rte_dir, tmp_path, method):
    run = train(tiny_bert, rte_dir, tmp_path / "run", method, "pooler", "linear")
    export = run / "hf_peft"
    config = json.loads((export / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["pooler", "classifier"]
    assert config["base_model_name_or_path"] == str(Path(tiny_bert).resolve())
    keys = saved_keys(export)
    # peft's own names: the wrapped module's, without "modules_to_save.default"; the method's below "bert."
    assert {"base_model.model.classifier.weight", "base_model.model.bert.pooler.dense.weight"} <= set(keys)
    assert not any("modules_to_save" in k or k.startswith("base_model.model.encoder.") for k in keys)
    notes = json.loads((export / NOTES_NAME).read_text())
    assert notes["head_included"] and notes["sequence_classification_class"] == "BertForSequenceClassification"
    assert "is included" in (export / "README.md").read_text()

    ours = peftlab.load(run)
    inputs = rte_batch(tiny_bert)
    with torch.no_grad():
        expected = ours(**inputs).logits
        theirs = peft.AutoPeftModelForSequenceClassification.from_pretrained(str(export)).eval()
        assert torch.allclose(theirs(**inputs).logits, expected, atol=1e-5)
        base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        again = peft.PeftModel.from_pretrained(base, export).eval()
        assert torch.allclose(again(**inputs).logits, expected, atol=1e-5)
        # The method's weights count: without them the same head gives other logits.
        with again.disable_adapter():
            assert not torch.allclose(again(**inputs).logits, expected, atol=1e-4)


def test_a_mean_pooled_run_exports_the_adapter_alone_and_says_why(tiny_bert, rte_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="peftlab"):
        run = train(tiny_bert, rte_dir, tmp_path / "run", "lora", "mean", "linear")
    export = run / "hf_peft"
    warned = [r.getMessage() for r in caplog.records if "classification head" in r.getMessage()]
    assert len(warned) == 1 and "not included" in warned[0] and "--pooling mean" in warned[0]
    config = json.loads((export / "adapter_config.json").read_text())
    assert config["task_type"] is None and "modules_to_save" not in config
    assert config["base_model_name_or_path"] == str(Path(tiny_bert).resolve())
    readme = (export / "README.md").read_text()
    assert "NOT included" in readme and "`--pooling mean --head linear`" in readme
    assert "`--pooling pooler --head linear`" in readme  # ... and which combinations export whole
    notes = json.loads((export / NOTES_NAME).read_text())
    assert not notes["head_included"] and "--pooling mean" in notes["head_not_included_because"]
    # The adapter still gives the run's hidden states: through the run's own head, its logits.
    ours = peftlab.load(run)
    inputs = rte_batch(tiny_bert)
    with torch.no_grad():
        loaded = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert), export).eval()
        hidden = loaded(**inputs).last_hidden_state
        logits = ours.head(pool(hidden, inputs["attention_mask"], "mean"))
        assert torch.allclose(logits, ours(**inputs).logits, atol=1e-5)


def test_a_reloaded_run_is_in_eval_mode_and_gives_the_same_logits_twice(tiny_bert, tmp_path):
    model = peftlab.classifier(tiny_bert, "lora", num_labels=2, lora_rank=2)
    peftlab.save(model, tmp_path / "run")
    loaded = peftlab.load(tmp_path / "run")
    assert not loaded.training and not any(m.training for m in loaded.modules())
    inputs = rte_batch(tiny_bert)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, loaded(**inputs).logits)


def perturbed(model: SequenceClassifier) -> SequenceClassifier:
    """``model`` with every trained parameter moved off its initial value (LoRA's B starts at zero)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.3)
    return model.eval()


def skip_without(arch: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(arch not in TINY_CONFIGS, reason=f"no tiny {arch} config")


# arch, method, pooling, head, config overrides: each the architecture's own head, with 3 labels.
WHOLE = [
    ("bert", "lora", "cls", "mlp", {}),
    ("roberta", "lora", "cls", "mlp", {}),
    ("roberta", "ia3", "pooler", "linear", {}),
    ("xlm-roberta", "lora", "cls", "mlp", {}),
    pytest.param("mpnet", "lora", "pooler", "linear", {}, marks=skip_without("mpnet")),
    ("deberta-v2", "lora", "cls", "mlp", {"pooler_hidden_act": "tanh"}),
    ("llama", "lora", "last", "score", {"pad_token_id": 0}),
    ("gpt2", "ia3", "pooler", "score", {}),  # no pad_token_id in its config: the export says to pass one
]
NOT_WHOLE = [
    ("bert", "pooler", "mlp", {}, "--pooling pooler --head mlp"),
    ("roberta", "cls", "linear", {}, "--pooling cls --head linear"),
    ("deberta-v2", "cls", "mlp", {}, "pooler_hidden_act is 'gelu'"),
    ("electra", "cls", "mlp", {}, "GELU"),
    ("distilbert", "cls", "mlp", {}, "ReLU"),
    ("llama", "last", "linear", {}, "bias-free"),
]


def tiny(arch: str, tmp_path: Path, method: str, pooling: str, head: str, overrides: dict) -> SequenceClassifier:
    config = TINY_CONFIGS[arch]()
    for name, value in overrides.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(tmp_path / "base")
    options = {"lora_rank": 2, "lora_targets": "all"} if method == "lora" else {"ia3_targets": "attn_out,ffn_out"}
    backbone = AutoModel.from_pretrained(tmp_path / "base")
    args = PeftArguments(method=method, **options)
    return perturbed(SequenceClassifier(backbone, HeadConfig(3, pooling, head), str(tmp_path / "base"), args))


@pytest.mark.parametrize("arch,method,pooling,head,overrides", WHOLE)
def test_each_architectures_own_head_exports_whole(tmp_path, arch, method, pooling, head, overrides):
    model = tiny(arch, tmp_path, method, pooling, head, overrides)
    (export,) = model.export_methods(tmp_path / "run")
    notes = json.loads((export / NOTES_NAME).read_text())
    assert notes["head_included"], notes["head_not_included_because"]
    kwargs = dict(notes["load_kwargs"])
    assert kwargs == (
        {"num_labels": 3, "pad_token_id": "<tokenizer.pad_token_id>"} if arch == "gpt2" else {"num_labels": 3}
    )
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    if model.architecture.causal:  # transformers finds the last token by the pad id: pad with one of its own
        inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 0)
        if "pad_token_id" in kwargs:
            kwargs["pad_token_id"] = 0
    with torch.no_grad():
        expected = model(**inputs).logits
        theirs = peft.AutoPeftModelForSequenceClassification.from_pretrained(str(export), **kwargs)
        assert torch.allclose(theirs.eval()(**inputs).logits, expected, atol=1e-5)


@pytest.mark.parametrize("arch,pooling,head,overrides,why", NOT_WHOLE)
def test_a_head_of_ours_that_is_not_the_architectures_exports_the_adapter_alone(
    tmp_path, arch, pooling, head, overrides, why
):
    model = tiny(arch, tmp_path, "lora", pooling, head, overrides)
    (export,) = model.export_methods(tmp_path / "run")
    notes = json.loads((export / NOTES_NAME).read_text())
    assert not notes["head_included"] and why in notes["head_not_included_because"]
    assert json.loads((export / "adapter_config.json").read_text())["task_type"] is None
    assert not any(k.startswith(f"base_model.model.{model.backbone.base_model_prefix}.") for k in saved_keys(export))


def test_the_base_model_is_named_so_that_peft_finds_it(tmp_path, monkeypatch):
    bundled = str(Path(peftlab.model_path()).resolve())
    assert resolvable_base(BUNDLED_MODEL) == bundled and resolvable_base(peftlab.model_path()) == bundled
    assert resolvable_base("roberta-base") == "roberta-base"  # a hub name stays one
    assert resolvable_base("") is None and resolvable_base(None) is None  # built from a config: nothing to name
    (tmp_path / "local").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolvable_base("local") == str(tmp_path.resolve() / "local")


def test_an_export_of_the_bundled_model_loads_offline_by_its_folder(tmp_path):
    model = perturbed(peftlab.classifier(None, "lora@-1", num_labels=2, lora_rank=2))
    assert model.base_model == BUNDLED_MODEL
    (export,) = model.export_methods(tmp_path / "run")
    assert json.loads((export / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(peftlab.model_path()).resolve()
    )
    inputs = rte_batch(peftlab.model_path())
    with torch.no_grad():
        theirs = peft.AutoPeftModelForSequenceClassification.from_pretrained(str(export)).eval()
        assert torch.allclose(theirs(**inputs).logits, model(**inputs).logits, atol=1e-5)
