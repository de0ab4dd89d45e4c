"""run_glue.py end to end on tiny random decoders (Llama, Qwen2, GPT-2) written by the tests.

Every method an architecture supports trains a couple of steps on the small RTE fixture, records the modules it
adapted and reloads to the same metrics; what it does not support is refused before any weights are loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from peftlab.errors import ConfigError
from peftlab.lab import stages as stages_module
from peftlab.lab.run import main

STEPS = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--disable_tqdm", "True",
         "--seed", "3", "--bottleneck_dim", "4", "--prefix_length", "2", "--prefix_hidden", "8", "--lora_rank", "2"]  # fmt: skip
SMALL = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=128, pad_token_id=0, bos_token_id=101, eos_token_id=102)  # fmt: skip


def config(arch: str):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    if arch == "gpt2":
        return GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128, pad_token_id=0,
                          bos_token_id=101, eos_token_id=102, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**SMALL, num_key_value_heads=2)


@pytest.fixture(scope="session")
def decoder(tmp_path_factory):
    """``decoder(arch)``: the folder of a tiny random decoder (2 layers, hidden 32, grouped-query attention but for
    GPT-2) with the bundled model's tokenizer, written once per session."""
    from transformers import AutoModel, AutoTokenizer

    from peftlab.modeling import resolve_model_path

    made: dict[str, str] = {}

    def make(arch: str) -> str:
        if arch not in made:
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            torch.manual_seed(0)
            AutoModel.from_config(config(arch)).save_pretrained(path)
            AutoTokenizer.from_pretrained(resolve_model_path(None)).save_pretrained(path)
            made[arch] = str(path)
        return made[arch]

    return make


# What each architecture supports, and the modules each method adapts there (layer 1 unless said).
SUPPORTED = {
    "llama": {
        "probe": [],
        "lora@1": ["layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"],
        "adapter@1 --adapter_form parallel": ["layers.1.mlp.down_proj"],
        "prefix@1": ["layers.1.self_attn"],
        "ffn@1": ["layers.1.mlp.up_proj", "layers.1.mlp.gate_proj", "layers.1.mlp.down_proj"],
        "attn@1": [f"layers.1.self_attn.{p}_proj" for p in "qkvo"],
        "full": ["embed_tokens", "layers", "norm"],
    },
    "qwen2": {
        "bitfit@1": [f"layers.1.self_attn.{p}_proj" for p in "qkv"],  # its only biases
        "lora@1 --lora_targets ffn_gate": ["layers.1.mlp.gate_proj"],
        "adapter@0+prefix@1": ["layers.1.self_attn", "layers.0.mlp.down_proj"],
    },
    "gpt2": {
        "probe": [],
        "bitfit@1": ["h.1.attn.c_attn", "h.1.attn.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj", "h.1.ln_1", "h.1.ln_2"],
        "lora@1 --lora_targets qkv": ["h.1.attn.c_attn"],
        "adapter@1 --placement attn": ["h.1.attn.c_proj"],
        "prefix@1": ["h.1.attn"],
        "ffn@1": ["h.1.mlp.c_fc", "h.1.mlp.c_proj"],
        "attn@1": ["h.1.attn.c_attn", "h.1.attn.c_proj"],
        "full": ["wte", "wpe", "h", "ln_f"],
    },
}


def run(model: str, glue, out, method: str, *extra: str) -> dict:
    name, *options = method.split()
    return main(["--model_name_or_path", model, "--task_name", "rte", "--glue_dir", str(glue), "--output_dir", str(out),
                 "--method", name, *options, *STEPS, *extra])  # fmt: skip


@pytest.mark.parametrize(
    "arch,method", [pytest.param(a, m, id=f"{a}-{m.split()[0]}") for a, methods in SUPPORTED.items() for m in methods]
)
def test_run_glue_trains_every_supported_method_on_a_tiny_decoder(decoder, rte_dir, tmp_path, arch, method):
    out = tmp_path / "out"
    results = run(decoder(arch), rte_dir, out, method)
    assert results["train_samples"] == 16 and results["eval_samples"] == 16
    recorded = json.loads((out / "run_config.json").read_text())
    assert sorted(recorded["targeted_modules"]) == sorted(SUPPORTED[arch][method])
    assert recorded["model_args"]["pooling"] == "pooler"  # on a decoder: its own pooling, the last token
    assert recorded["peft_args"]["prefix_length"] == 2 and recorded["peft_args"]["bottleneck_dim"] == 4
    if not method.startswith("full"):
        assert results["trainable_params"] < results["total_params"] / 10
    assert (out / "hf_peft" / "adapter_config.json").is_file() == method.startswith("lora")
    if method.startswith("lora") and arch == "gpt2":
        assert json.loads((out / "hf_peft" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    again = main(["--model_name_or_path", str(out), "--task_name", "rte", "--glue_dir", str(rte_dir),
                  "--output_dir", str(tmp_path / "eval"), "--do_eval", "--disable_tqdm", "True"])  # fmt: skip
    assert again["eval_loss"] == pytest.approx(results["eval_loss"], abs=1e-6)


@pytest.mark.parametrize(
    "arch,method,extra,message",
    [
        ("llama", "bitfit@1", [], r"bitfit would train nothing at .* in layers \[1\]: llama has no bias there"),
        ("gpt2", "lora@1", [], r"lora would touch nothing at query, value in layers \[1\]: gpt2 .* role 'qkv'"),
        ("llama", "adapter@1", ["--adapter_residual_norm", "true"], r"llama is pre-norm"),
        ("qwen2", "probe", ["--pooling", "cls"], r"pooling='cls' reads the first token"),
    ],
)  # fmt: skip
def test_what_a_decoder_cannot_do_is_refused_before_loading_it(
    decoder, rte_dir, tmp_path, monkeypatch, arch, method, extra, message
):
    path = decoder(arch)
    monkeypatch.setattr(stages_module, "make_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=message):
        run(path, rte_dir, tmp_path / "out", method, *extra)


@pytest.mark.parametrize("arch,method", [("llama", "adapter@1"), ("gpt2", "prefix@1"), ("qwen2", "probe")])
def test_frozen_prefix_cache_gives_a_decoder_run_the_same_metrics(decoder, rte_dir, tmp_path, arch, method):
    """No dropout in these decoders: a run reading the cache (layers below the method, or the probe's pooled
    last-token features after the final norm) matches the run without it."""
    plain = run(decoder(arch), rte_dir, tmp_path / "plain", method, "--head_dropout", "0", "--cache_frozen_prefix", "false")  # fmt: skip
    cached = run(decoder(arch), rte_dir, tmp_path / "cached", method, "--head_dropout", "0", "--cache_frozen_prefix",
                 "true", "--frozen_cache_dir", str(tmp_path / "cache"))  # fmt: skip
    mode = json.loads((tmp_path / "cached" / "run_config.json").read_text())["frozen_layers_mode"]
    assert mode.startswith(f"eval (layers below {2 if method == 'probe' else 1} are computed once")
    assert cached["eval_loss"] == pytest.approx(plain["eval_loss"], abs=1e-5)
    assert cached["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-5)


@pytest.mark.parametrize("arch,method", [("llama", "lora@1"), ("gpt2", "prefix@1"), ("qwen2", "adapter@1")])
def test_a_decoder_saved_in_bf16_trains_float32_parameters_with_either_model_dtype(
    decoder, rte_dir, tmp_path, arch, method
):
    """Decoder checkpoints on the hub are mostly saved in bf16: loaded in float32 by default, or kept in bf16
    (--model_dtype bfloat16 --bf16, a frozen backbone at half the memory), the trained parameters are float32."""
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoModel

    half = tmp_path / "half"
    AutoModel.from_pretrained(decoder(arch), dtype=torch.bfloat16).save_pretrained(half)
    for f in Path(decoder(arch)).iterdir():
        if not f.name.startswith(("model", "config")):
            shutil.copy(f, half / f.name)
    for name, extra in (("f32", []), ("bf16", ["--model_dtype", "bfloat16", "--bf16", "true"])):
        results = run(str(half), rte_dir, tmp_path / name, method, *extra)
        assert math.isfinite(results["train_loss"]) and math.isfinite(results["eval_loss"])
        saved = load_file(str(tmp_path / name / "model.safetensors"))
        assert {t.dtype for t in saved.values()} == {torch.float32}
