"""(IA)^3 and VeRA beyond the method x architecture matrix of test_methods.py: each computes what HuggingFace peft's
implementation computes with the same vectors, (IA)^3 exports to peft's format, VeRA's frozen projections are never
saved and a saved run reloads to identical logits, and the methods' extra state is recorded and checked."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_methods import TINY_CONFIGS, batch
from transformers import AutoModel

from peftlab.errors import ConfigError
from peftlab.methods import PeftArguments
from peftlab.methods.ia3 import IA3Linear
from peftlab.methods.vera import VeraLinear
from peftlab.modeling import (
    MODEL_CONFIG_NAME,
    WEIGHTS_NAME,
    HeadConfig,
    SequenceClassifier,
    build_classifier,
    load_classifier,
    pool,
    save_model_config,
)

# arch: (our --ia3_targets, peft's target_modules and feedforward_modules for layers 0 and 2, as regexes)
IA3_PEERS = {
    "bert": ("key,value,ffn_out", r".*\.[02]\.(attention\.self\.(key|value)|output\.dense)", r".*\.[02]\.output\.dense"),
    "llama": ("key,value,ffn_out", r".*\.[02]\.(self_attn\.(k_proj|v_proj)|mlp\.down_proj)", r".*\.[02]\.mlp\.down_proj"),
    "gpt2": ("qkv,ffn_out", r".*\.[02]\.(attn\.c_attn|mlp\.c_proj)", r".*\.[02]\.mlp\.c_proj"),
}  # fmt: skip


def inputs_for(model: SequenceClassifier) -> dict[str, torch.Tensor]:
    data = batch()
    return model.architecture.inputs(data["input_ids"], data["attention_mask"])


@pytest.mark.parametrize("arch", list(IA3_PEERS))
def test_our_ia3_equals_hf_peft_ia3_and_exports_to_its_format(tmp_path, arch):
    peft = pytest.importorskip("peft")
    targets, target_modules, feedforward_modules = IA3_PEERS[arch]
    torch.manual_seed(0)
    base = AutoModel.from_config(TINY_CONFIGS[arch]()).eval()
    base.save_pretrained(tmp_path / "base")
    pooling = "mean" if arch == "bert" else "last"
    ours = SequenceClassifier(copy.deepcopy(base), HeadConfig(num_labels=2, pooling=pooling), str(tmp_path / "base"),
                              PeftArguments(method="ia3@0,2", ia3_targets=targets)).eval()  # fmt: skip
    scaled = {name: m for name, m in ours.backbone.named_modules() if isinstance(m, IA3Linear)}
    assert len(scaled) == 2 * len(targets.split(",")) and sum(m.scale_input for m in scaled.values()) == 2  # ffn_out
    with torch.no_grad():
        for module in scaled.values():
            module.ia3_l.normal_(1.0, 0.3)
    config = peft.IA3Config(
        target_modules=target_modules, feedforward_modules=feedforward_modules, fan_in_fan_out=arch == "gpt2"
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    their_state = theirs.state_dict()
    assert sum(k.endswith(".ia3_l.default") for k in their_state) == len(scaled)
    with torch.no_grad():
        for name, module in scaled.items():
            key = f"base_model.model.{name}.ia3_l.default"
            their_state[key].copy_(module.ia3_l.view_as(their_state[key]))
        inputs = inputs_for(ours)
        expected = ours.backbone(**inputs).last_hidden_state
        assert torch.allclose(theirs(**inputs).last_hidden_state, expected, atol=1e-6)
        assert not torch.allclose(base(**inputs).last_hidden_state, expected, atol=1e-3)  # the vectors matter
        (exported,) = ours.export_methods(tmp_path / "run")
        assert exported == tmp_path / "run" / "hf_peft"
        assert json.loads((exported / "adapter_config.json").read_text())["peft_type"] == "IA3"
        loaded = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(tmp_path / "base"), exported).eval()
        hidden = loaded(**inputs).last_hidden_state
        assert torch.allclose(hidden, expected, atol=1e-6)
        # ... and through our head the logits agree too.
        logits = ours.head(pool(hidden, inputs["attention_mask"], ours.pooling))
        ours_logits = ours(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        assert torch.allclose(logits, ours_logits, atol=1e-6)


def test_ia3_exports_only_when_it_is_the_runs_only_method(tmp_path):
    torch.manual_seed(0)
    model = SequenceClassifier(AutoModel.from_config(TINY_CONFIGS["bert"]()), HeadConfig(num_labels=2, pooling="mean"),
                               peft_args=PeftArguments(method="ia3@0+lora@1", lora_rank=2))  # fmt: skip
    assert model.export_methods(tmp_path) == []


@pytest.mark.parametrize("arch,targets", [("bert", ["query", "value"]), ("llama", ["q_proj", "v_proj"])])
def test_our_vera_equals_hf_peft_vera_with_the_same_seed(arch, targets):
    """The same frozen A and B from the same seed (llama: value is narrower than query, so each layer uses the
    top-left block of the shared pair), and the same function of d and b."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = AutoModel.from_config(TINY_CONFIGS[arch]()).eval()
    pooling = "mean" if arch == "bert" else "last"
    ours = SequenceClassifier(copy.deepcopy(base), HeadConfig(num_labels=2, pooling=pooling),
                              peft_args=PeftArguments(method="vera", vera_rank=6, vera_seed=3)).eval()  # fmt: skip
    config = peft.VeraConfig(r=6, target_modules=targets, projection_prng_key=3, d_initial=0.1)
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    (method,) = ours.injection.applied
    assert torch.equal(method.projections.vera_A, theirs.base_model.vera_A["default"])
    assert torch.equal(method.projections.vera_B, theirs.base_model.vera_B["default"])
    their_state = theirs.state_dict()
    with torch.no_grad():
        for name, module in ours.backbone.named_modules():
            if isinstance(module, VeraLinear):
                module.vera_d.normal_(0.1, 0.5)
                module.vera_b.normal_(0.0, 0.5)
                their_state[f"base_model.model.{name}.vera_lambda_d.default"].copy_(module.vera_d)
                their_state[f"base_model.model.{name}.vera_lambda_b.default"].copy_(module.vera_b)
        inputs = inputs_for(ours)
        expected = ours.backbone(**inputs).last_hidden_state
        assert torch.allclose(theirs(**inputs).last_hidden_state, expected, atol=1e-6)
        assert not torch.allclose(base(**inputs).last_hidden_state, expected, atol=1e-3)


def test_vera_trains_d_and_b_only_and_every_layer_shares_one_frozen_pair():
    torch.manual_seed(0)
    model = SequenceClassifier(AutoModel.from_config(TINY_CONFIGS["bert"]()), HeadConfig(num_labels=2, pooling="mean"),
                               peft_args=PeftArguments(method="vera", vera_rank=5))  # fmt: skip
    layers = [m for m in model.backbone.modules() if isinstance(m, VeraLinear)]
    assert len(layers) == 3 * 2 and len({id(m.vera_projections) for m in layers}) == 1
    trainable = [name for name, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith((".vera_d", ".vera_b")) for name in trainable)
    projections = layers[0].vera_projections
    assert projections.vera_A.shape == (5, 32) and projections.vera_B.shape == (32, 5)
    assert not projections.vera_A.requires_grad and not any(True for _ in projections.parameters())
    assert not any("vera_A" in key or "vera_B" in key for key in model.state_dict())  # never saved
    assert set(model.trainable_state_dict()) == {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "options,message",
    [
        ({"vera_rank": 0}, r"--vera_rank must be >= 1, got 0"),
        ({"vera_d_init": 0.0}, r"--vera_d_init 0.0 must be nonzero: with b at zero too"),
        ({"vera_seed": -1}, r"--vera_seed must be >= 0, got -1"),
        ({"vera_targets": "query,gate"}, r"--vera_targets 'query,gate': \['gate'\] not valid; choose from query"),
        ({"ia3_targets": "keys"}, r"--ia3_targets 'keys': \['keys'\] not valid; choose from query, key, value"),
    ],
)
def test_bad_options_of_the_new_methods_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        PeftArguments(**options)


def perturbed(model: SequenceClassifier) -> SequenceClassifier:
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.3)
    return model.eval()


def save_run(model: SequenceClassifier, out) -> None:
    """What the Trainer's save writes (GlueTrainer._save): the trained parameters and peftlab_model.json."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: t.contiguous() for k, t in model.trainable_state_dict().items()}, str(out / WEIGHTS_NAME))
    save_model_config(out, **model.export_config())


def test_a_saved_vera_run_reloads_to_identical_logits_from_its_seed(tiny_bert, tmp_path):
    torch.manual_seed(0)
    args = PeftArguments(method="vera", vera_rank=8, vera_seed=11)
    model = perturbed(build_classifier(tiny_bert, HeadConfig(num_labels=2, pooling="mean"), args))
    save_run(model, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / MODEL_CONFIG_NAME).read_text())
    assert saved["extra_state"]["vera"]["seed"] == 11 and set(saved["extra_state"]["vera"]["sha256"]) == {
        "vera_A",
        "vera_B",
    }
    weights = load_file(str(tmp_path / "run" / WEIGHTS_NAME))
    assert all(k.endswith((".vera_d", ".vera_b")) or k.startswith("head.") for k in weights)
    assert sum(t.numel() for k, t in weights.items() if not k.startswith("head.")) == 2 * 2 * (8 + 32)
    reloaded = load_classifier(tmp_path / "run").eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)
        # The frozen projections matter: another seed's, with the same trained vectors, computes something else.
        other = build_classifier(tiny_bert, HeadConfig(num_labels=2, pooling="mean"),
                                 PeftArguments(method="vera", vera_rank=8, vera_seed=12)).eval()  # fmt: skip
        other.load_state_dict(weights, strict=False)
        assert not torch.allclose(other(**inputs).logits, model(**inputs).logits, atol=1e-4)


def test_a_reload_that_draws_other_projections_is_refused(tiny_bert, tmp_path):
    torch.manual_seed(0)
    model = build_classifier(tiny_bert, HeadConfig(num_labels=2, pooling="mean"), PeftArguments(method="vera"))
    save_run(model, tmp_path / "run")
    path = tmp_path / "run" / MODEL_CONFIG_NAME
    saved = json.loads(path.read_text())
    drawn = copy.deepcopy(saved)
    drawn["extra_state"]["vera"]["sha256"]["vera_B"] = "0" * 64  # as if this torch had drawn another B
    path.write_text(json.dumps(drawn))
    with pytest.raises(
        ConfigError, match=r"vera: vera_B drawn again from seed 0 .* is not the one the run was trained"
    ):
        load_classifier(tmp_path / "run")
    edited = copy.deepcopy(saved)
    edited["extra_state"]["vera"]["seed"] = 5
    path.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match=r"records seed 5 for its frozen projections, but its options say"):
        load_classifier(tmp_path / "run")
    stray = copy.deepcopy(saved)
    stray["extra_state"]["adapter"] = {"seed": 1}
    path.write_text(json.dumps(stray))
    with pytest.raises(ValueError, match=r"records extra state for adapter, which this model does not have"):
        load_classifier(tmp_path / "run")


def test_runs_of_methods_without_extra_state_save_and_load_as_before(tiny_bert, tmp_path):
    """No ``extra_state`` key is written for them, and a config without one (every run saved before the key
    existed) loads."""
    torch.manual_seed(0)
    args = PeftArguments(method="ia3", ia3_targets="key,value,ffn_out")
    model = perturbed(build_classifier(tiny_bert, HeadConfig(num_labels=2, pooling="mean"), args))
    save_run(model, tmp_path / "run")
    assert "extra_state" not in json.loads((tmp_path / "run" / MODEL_CONFIG_NAME).read_text())
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(load_classifier(tmp_path / "run").eval()(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("method", ["ia3", "vera"])
def test_a_trained_run_of_each_new_method_saves_and_reloads_through_run_glue(tiny_bert, rte_dir, tmp_path, method):
    from peftlab.lab.run import main

    out = tmp_path / "out"
    fast = ["--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "True", "--seed", "7"]
    results = main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir),
                    "--output_dir", str(out), "--method", method, "--vera_rank", "8", *fast])  # fmt: skip
    method_params = {"ia3": 2 * (32 + 32 + 64), "vera": 2 * 2 * (8 + 32)}[method]
    assert results["method_params"] == method_params
    saved = load_file(str(out / WEIGHTS_NAME))
    assert sum(t.numel() for k, t in saved.items() if not k.startswith("head.")) == method_params
    assert (out / "hf_peft" / "adapter_config.json").is_file() == (method == "ia3")
    again = main(["--model_name_or_path", str(out), "--task_name", "rte", "--glue_dir", str(rte_dir),
                  "--output_dir", str(tmp_path / "eval"), "--do_eval", "--disable_tqdm", "True"])  # fmt: skip
    assert again["eval_loss"] == pytest.approx(results["eval_loss"], abs=1e-6)


def test_auto_layer_selection_asks_the_method_class_whether_it_has_layers(monkeypatch):
    from peftlab.lab.autolayer import check_auto
    from peftlab.methods import METHODS

    for name in ("ia3", "vera", "lora"):
        assert check_auto(name, "auto", "0-2", 3) == [0, 1, 2]
    for name in ("full", "probe"):
        with pytest.raises(ConfigError, match=rf"--method {name} has no layer to choose"):
            check_auto(name, "auto", "0-2", 3)
    # A method is refused for what its class says, not for its name.
    monkeypatch.setattr(METHODS["vera"], "trains_layers", False)
    with pytest.raises(ConfigError, match=r"--method vera has no layer to choose"):
        check_auto("vera", "auto", "0-2", 3)
