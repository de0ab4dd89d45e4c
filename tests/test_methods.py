"""Every method on every architecture, on tiny randomly initialised encoders (no weights downloaded).

The (method x architecture) grid is generated: adding a method is one entry in ``CASES``, adding an architecture
one entry in ``TINY_CONFIGS``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import (
    AutoModel,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from peftlab.architectures import ARCHITECTURES, architecture_of, layers_of
from peftlab.errors import ConfigError
from peftlab.methods import METHODS, PeftArguments, TunerLayer
from peftlab.methods.adapter import AdapterLayer
from peftlab.methods.lora import LoraLinear, set_lora_merged
from peftlab.modeling import HeadConfig, SequenceClassifier, pool

D, FF, H, L = 32, 48, 4, 3  # hidden, FFN width, heads, layers
_BERT_KW = dict(vocab_size=99, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=FF,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
TINY_CONFIGS = {
    "bert": lambda: BertConfig(**_BERT_KW),
    "roberta": lambda: RobertaConfig(**_BERT_KW, pad_token_id=1),
    "xlm-roberta": lambda: XLMRobertaConfig(**_BERT_KW, pad_token_id=1),
    "electra": lambda: ElectraConfig(**_BERT_KW, embedding_size=D),
    "deberta-v2": lambda: DebertaV2Config(**_BERT_KW),
    "distilbert": lambda: DistilBertConfig(
        vocab_size=99, dim=D, n_layers=L, n_heads=H, hidden_dim=FF, max_position_embeddings=64, dropout=0.0,
        attention_dropout=0.0,
    ),
}  # fmt: skip


def test_every_architecture_in_the_table_has_a_tiny_config():
    assert set(TINY_CONFIGS) == set(ARCHITECTURES)


# method string, extra options, closed-form count of method parameters (layer 1 only)
CASES = {
    "probe": ("probe", {}, 0),
    "bitfit": ("bitfit@1", {}, 4 * D + FF + D + 2 * D),
    "lora": ("lora@1", {"lora_rank": 2, "lora_targets": "query,value"}, 2 * 2 * (D + D)),
    "lora_ffn": ("lora@1", {"lora_rank": 3, "lora_targets": "ffn_in,ffn_out"}, 3 * (D + FF) * 2),
    "adapter_ffn_seq": ("adapter@1", {"bottleneck_dim": 3}, 2 * D * 3 + 3 + D),
    "adapter_attn_par": ("adapter@1", {"bottleneck_dim": 3, "placement": "attn", "adapter_form": "parallel",
                                       "adapter_scaling": 4.0, "adapter_layernorm": True}, 2 * D * 3 + 3 + D + 2 * D),  # fmt: skip
    "prefix": ("prefix@1", {"prefix_length": 5, "prefix_reparam": False}, 5 * 2 * D),
    "prefix_mlp": ("prefix@1", {"prefix_length": 5, "prefix_hidden": 7}, 5 * D + D * 7 + 7 + 7 * 2 * D + 2 * D),
    "ffn": ("ffn@1", {}, D * FF + FF + FF * D + D),
    "ffn_ln": ("ffn@1", {"train_layernorm": True}, D * FF + FF + FF * D + D + 2 * D),
    "attn": ("attn@1", {}, 4 * (D * D + D)),
}  # fmt: skip
ZERO_INIT = {"probe", "lora", "lora_ffn", "adapter_ffn_seq", "adapter_attn_par"}
PREFIX_CASES = {"prefix", "prefix_mlp"}


def test_every_registered_method_has_a_case():
    assert {method.split("@")[0] for method, _, _ in CASES.values()} | {"full"} == set(METHODS)


def make(arch: str, method: str = "probe", pooling: str = "mean", **options) -> SequenceClassifier:
    torch.manual_seed(0)
    backbone = AutoModel.from_config(TINY_CONFIGS[arch]())
    return SequenceClassifier(
        backbone, HeadConfig(num_labels=3, pooling=pooling), peft_args=PeftArguments(method=method, **options)
    )


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (4, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def grid():
    for arch in TINY_CONFIGS:
        for case, (method, options, count) in CASES.items():
            supported = case not in PREFIX_CASES or ARCHITECTURES[arch].supports_prefix
            yield pytest.param(arch, case, method, options, count, id=f"{arch}-{case}", marks=() if supported else pytest.mark.skip(reason=f"prefix is refused on {arch}"))  # fmt: skip


@pytest.mark.parametrize("arch,case,method,options,count", list(grid()))
def test_only_method_and_head_parameters_train_and_counts_match(arch, case, method, options, count):
    model = make(arch, method, **options)
    counts = model.parameter_counts()
    head = sum(p.numel() for p in model.head.parameters())
    assert counts["method_params"] == count
    assert counts["head_params"] == head
    assert counts["trainable_params"] == count + head
    tuner = {id(p) for m in model.modules() if isinstance(m, TunerLayer) for p in m.tuner_parameters()}
    head_ids = {id(p) for p in model.head.parameters()}
    for name, param in model.backbone.named_parameters():
        if id(param) in tuner:
            assert param.requires_grad, name
    assert all(p.requires_grad for p in model.head.parameters())
    assert not any(id(p) in head_ids for p in model.backbone.parameters())


@pytest.mark.parametrize("arch,case,method,options,count", list(grid()))
def test_base_weights_are_bit_identical_after_optimizer_steps(arch, case, method, options, count):
    model = make(arch, method, **options)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for step in range(2):
        optimizer.zero_grad()
        model(**batch(step)).loss.backward()
        optimizer.step()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"frozen {name} changed"
    moved = [n for n, p in model.named_parameters() if n in trained and not torch.equal(p, trained[n])]
    assert moved, "no trainable parameter moved"


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
@pytest.mark.parametrize("case", sorted(ZERO_INIT))
def test_zero_initialised_methods_leave_logits_equal_to_the_base_model(arch, case):
    method, options, _ = CASES[case]
    base, peft = make(arch, "probe"), make(arch, method, **options)
    peft.head.load_state_dict(base.head.state_dict())
    base.eval(), peft.eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(base(**inputs).logits, peft(**inputs).logits, atol=1e-6)


def _layer_state(model: SequenceClassifier, layer: int) -> dict[str, torch.Tensor]:
    arch = architecture_of(model.backbone)
    return {k: v for k, v in layers_of(model.backbone, arch)[layer].state_dict().items()}


@pytest.mark.parametrize("arch", ["bert", "distilbert", "deberta-v2"])
@pytest.mark.parametrize("case", ["bitfit", "lora", "adapter_ffn_seq", "ffn", "attn"])
def test_target_layer_k_touches_only_layer_k(arch, case):
    method, options, _ = CASES[case]
    model = make(arch, method.replace("@1", "@-1"), **options)  # -1: the top layer, counted from the end
    layers = layers_of(model.backbone, architecture_of(model.backbone))
    for index, layer in enumerate(layers):
        changed = any(p.requires_grad for p in layer.parameters()) or any(
            isinstance(m, TunerLayer) for m in layer.modules()
        )
        assert changed == (index == L - 1), f"layer {index}"
    assert all(not p.requires_grad for p in model.backbone.embeddings.parameters())


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_adapter_placement_lands_where_it_says(arch):
    for placement, role, other in (("ffn", "ffn_out", "attn_out"), ("attn", "attn_out", "ffn_out")):
        model = make(arch, "adapter@0", placement=placement, bottleneck_dim=2)
        spec = architecture_of(model.backbone)
        layer = layers_of(model.backbone, spec)[0]
        assert isinstance(layer.get_submodule(spec.roles[role]), AdapterLayer)
        assert isinstance(layer.get_submodule(spec.roles[other]), nn.Linear)


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_ffn_method_never_trains_the_attention_output_projection(arch):
    model = make(arch, "ffn@all", train_layernorm=True)
    spec = architecture_of(model.backbone)
    for layer in layers_of(model.backbone, spec):
        for role in ("query", "key", "value", "attn_out", "attn_norm"):
            assert not any(p.requires_grad for p in layer.get_submodule(spec.roles[role]).parameters()), role
        for role in ("ffn_in", "ffn_out", "ffn_norm"):
            assert all(p.requires_grad for p in layer.get_submodule(spec.roles[role]).parameters()), role


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
@pytest.mark.parametrize("case", ["lora", "adapter_attn_par", "prefix_mlp", "bitfit", "ffn"])
def test_saved_trainable_weights_reload_to_identical_logits(arch, case):
    method, options, _ = CASES[case]
    if case in PREFIX_CASES and not ARCHITECTURES[arch].supports_prefix:
        pytest.skip(f"prefix is refused on {arch}")
    model = make(arch, method, **options)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    state = model.trainable_state_dict()
    assert sum(t.numel() for t in state.values()) == model.parameter_counts()["trainable_params"]
    fresh = make(arch, method, **options)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and not any(k in state for k in missing)
    model.eval(), fresh.eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, fresh(**inputs).logits)


@pytest.mark.parametrize("arch", ["bert", "roberta", "electra"])
def test_prefix_respects_padding(arch):
    model = make(arch, "prefix@all", prefix_length=3).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05) if param.requires_grad else None
    ids = torch.randint(5, 99, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad():
        alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        in_batch = model(input_ids=padded, attention_mask=mask).logits
    assert torch.allclose(alone, in_batch, atol=1e-5)


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_lora_merge_equals_unmerged_and_is_idempotent(arch):
    model = make(arch, "lora@all", lora_targets="query,key,value,attn_out,ffn_in,ffn_out").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.lora_B.weight.normal_(std=0.1)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    weights = {n: p.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        unmerged = model(**inputs).logits
        set_lora_merged(model, True)
        set_lora_merged(model, True)
        merged = model(**inputs).logits
        set_lora_merged(model, False)
    assert torch.allclose(unmerged, merged, atol=1e-5)
    for name, param in model.named_parameters():
        assert torch.equal(param, weights[name]), f"{name} not restored bit for bit"


@pytest.mark.parametrize(
    "method,options,message",
    [
        ("lora@7", {}, r"Layer 7 is out of range for a model with 3 layers; valid: 0..2 or -3..-1"),
        ("adapter@1", {"bottleneck_dim": 49}, r"--bottleneck_dim 49 must be between 1 and the FFN width 48"),
        ("prefix@1", {}, r"prefix tuning is not available for distilbert"),
        ("full+lora", {}, r"'full' trains everything and cannot be combined"),
        ("lora", {"lora_targets": "query,gate"}, r"\['gate'\] not valid; choose from query, key, value, attn_out"),
        ("bitfit@1+lora@9", {}, r"Layer 9 is out of range"),
        # A reversed range selects no layer: the method would train nothing (BitFit trained the head only).
        ("bitfit@2-0", {}, r"Layer range '2-0' is reversed: it selects no layer. Write the lower index first: '0-2'"),
        ("lora", {"target_layers": "2-1"}, r"Layer range '2-1' is reversed.*'1-2'"),
        ("adapter", {"target_layers": "0,2-1"}, r"Layer range '2-1' in '0,2-1' is reversed"),
    ],
)  # fmt: skip
def test_bad_configuration_fails_before_the_model_is_modified(method, options, message):
    torch.manual_seed(0)
    backbone = AutoModel.from_config(TINY_CONFIGS["distilbert"]())
    before = {n: (type(m), [p.requires_grad for p in m.parameters(recurse=False)]) for n, m in backbone.named_modules()}
    with pytest.raises(ConfigError, match=message):
        SequenceClassifier(
            backbone, HeadConfig(num_labels=2, pooling="cls"), peft_args=PeftArguments(method=method, **options)
        )
    after = {n: (type(m), [p.requires_grad for p in m.parameters(recurse=False)]) for n, m in backbone.named_modules()}
    assert before == after


def test_layer_specs_select_what_they_say_and_never_nothing():
    from peftlab.architectures import parse_layers

    assert parse_layers("all", 6) == [0, 1, 2, 3, 4, 5]
    assert parse_layers("2-5", 6) == parse_layers("2--1", 6) == [2, 3, 4, 5]
    assert parse_layers("-1", 6) == [5] and parse_layers("1,3", 6) == [1, 3] and parse_layers("4-4", 6) == [4]
    for spec, fix in (("5-2", "2-5"), ("1,5-2", "2-5"), ("5--3", "3-5")):
        with pytest.raises(
            ConfigError, match=rf"is reversed: it selects no layer. Write the lower index first: '{fix}'"
        ):
            parse_layers(spec, 6)
    for spec in ("", ",", []):
        with pytest.raises(ConfigError, match=r"Empty layer list"):
            parse_layers(spec, 6)


def test_unknown_method_and_option_values_are_named():
    with pytest.raises(ConfigError, match=r"Unknown method 'loraa'. Valid methods: adapter, bitfit"):
        PeftArguments(method="loraa")
    with pytest.raises(ConfigError, match=r"--placement 'mlp' is not valid; choose one of ffn, attn"):
        PeftArguments(placement="mlp")


def test_combination_adapter_at_one_layer_plus_lora_everywhere():
    model = make("bert", "adapter@1+lora@all", bottleneck_dim=2, lora_rank=2)
    assert model.injection.methods == [("adapter", [1]), ("lora", [0, 1, 2])]
    assert model.parameter_counts()["method_params"] == (2 * D * 2 + 2 + D) + L * 2 * 2 * (D + D)


def test_num_hidden_layers_truncates_the_backbone():
    model = make("bert", "probe", num_hidden_layers=2)
    assert len(layers_of(model.backbone, architecture_of(model.backbone))) == 2
    assert model.backbone.config.num_hidden_layers == 2
    with pytest.raises(ConfigError, match=r"--num_hidden_layers 5 must be between 1 and 3"):
        make("bert", "probe", num_hidden_layers=5)


def test_our_lora_equals_hf_peft_lora_and_exports_to_its_format(tmp_path):
    peft = pytest.importorskip("peft")
    from peftlab.methods.lora import export_peft

    torch.manual_seed(0)
    base = AutoModel.from_config(TINY_CONFIGS["bert"]()).eval()
    base.save_pretrained(tmp_path / "base")
    ours = SequenceClassifier(copy.deepcopy(base), HeadConfig(num_labels=2, pooling="mean"),
                              peft_args=PeftArguments(method="lora@0,2", lora_rank=4, lora_alpha=8)).eval()  # fmt: skip
    with torch.no_grad():
        for module in ours.modules():
            if isinstance(module, LoraLinear):
                module.lora_B.weight.normal_(std=0.2)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], layers_to_transform=[0, 2])
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    their_state = theirs.state_dict()
    with torch.no_grad():
        for name, module in ours.backbone.named_modules():
            if isinstance(module, LoraLinear):
                for part in ("lora_A", "lora_B"):
                    their_state[f"base_model.model.{name}.{part}.default.weight"].copy_(getattr(module, part).weight)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        expected = ours.backbone(**inputs).last_hidden_state
        assert torch.allclose(theirs(**inputs).last_hidden_state, expected, atol=1e-6)
        export_peft(ours.backbone, tmp_path / "export", str(tmp_path / "base"))
        loaded = peft.PeftModel.from_pretrained(
            AutoModel.from_pretrained(tmp_path / "base"), tmp_path / "export"
        ).eval()
        assert torch.allclose(loaded(**inputs).last_hidden_state, expected, atol=1e-6)
        # ... and through our head the logits agree too.
        logits = ours.head(pool(loaded(**inputs).last_hidden_state, inputs["attention_mask"], "mean"))
        assert torch.allclose(logits, ours(**inputs).logits, atol=1e-6)
