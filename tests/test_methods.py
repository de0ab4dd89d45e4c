"""Every method on every architecture, on tiny randomly initialised encoders and decoders (no weights downloaded).

The (method x architecture) grid is generated: adding a method is one row in ``CASES`` (its closed-form
parameter count per architecture family, or the refusal it meets there), adding an architecture one entry in
``TINY_CONFIGS`` (and its family in ``FAMILY``).
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
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    MPNetConfig,
    Qwen2Config,
    RobertaConfig,
    XLMRobertaConfig,
)

from peftlab.architectures import ARCHITECTURES, ATTENTION_ROLES, LINEAR_ROLES, architecture_of, layers_of
from peftlab.errors import ConfigError
from peftlab.methods import METHODS, PeftArguments, TunerLayer
from peftlab.methods.adapter import AdapterLayer
from peftlab.methods.lora import LoraLinear, set_lora_merged
from peftlab.modeling import HeadConfig, SequenceClassifier, pool

D, FF, H, L = 32, 48, 4, 3  # hidden, FFN width, heads, layers
KV, HD = 2, 8  # decoders (but GPT-2): key/value heads and head width; 4 query heads share 2 key/value heads
KVW = KV * HD  # width of a key or value projection with grouped-query attention
_BERT_KW = dict(vocab_size=99, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=FF,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
_DECODER_KW = dict(vocab_size=99, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=KV,
                   intermediate_size=FF, max_position_embeddings=64, head_dim=HD)  # fmt: skip
TINY_CONFIGS = {
    "bert": lambda: BertConfig(**_BERT_KW),
    "roberta": lambda: RobertaConfig(**_BERT_KW, pad_token_id=1),
    "xlm-roberta": lambda: XLMRobertaConfig(**_BERT_KW, pad_token_id=1),
    "electra": lambda: ElectraConfig(**_BERT_KW, embedding_size=D),
    "deberta-v2": lambda: DebertaV2Config(**_BERT_KW),
    "mpnet": lambda: MPNetConfig(**_BERT_KW),  # relative position bias (32 buckets: the encoder assumes them)
    "distilbert": lambda: DistilBertConfig(
        vocab_size=99, dim=D, n_layers=L, n_heads=H, hidden_dim=FF, max_position_embeddings=64, dropout=0.0,
        attention_dropout=0.0,
    ),
    "llama": lambda: LlamaConfig(**_DECODER_KW),
    "mistral": lambda: MistralConfig(**_DECODER_KW),
    "qwen2": lambda: Qwen2Config(**_DECODER_KW),  # biases on query, key and value only
    "gemma": lambda: GemmaConfig(**_DECODER_KW),
    "gemma2": lambda: Gemma2Config(**_DECODER_KW, sliding_window=4),  # alternating sliding-window layers
    "gpt2": lambda: GPT2Config(
        vocab_size=99, n_embd=D, n_layer=L, n_head=H, n_inner=FF, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0,
    ),
}  # fmt: skip
DECODERS = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gpt2")

# Families with the same closed-form counts: post-LN encoders with biases; Llama-style decoders (gated FFN,
# grouped-query attention, RMSNorm, no biases); Qwen2 (the same with biases on query, key and value); GPT-2 (fused
# query/key/value Conv1D, biases, LayerNorm, one key/value head per query head).
ENC, LLAMA, QWEN2, GPT2 = "encoder", "llama-like", "qwen2", "gpt2"
FAMILY = {"bert": ENC, "roberta": ENC, "xlm-roberta": ENC, "electra": ENC, "deberta-v2": ENC, "mpnet": ENC,
          "distilbert": ENC, "llama": LLAMA, "mistral": LLAMA, "gemma": LLAMA, "gemma2": LLAMA, "qwen2": QWEN2,
          "gpt2": GPT2}  # fmt: skip


def test_every_architecture_in_the_table_has_a_tiny_config():
    assert set(TINY_CONFIGS) == set(ARCHITECTURES) == set(FAMILY)


class Refused(str):
    """The expected refusal (a regex of the ConfigError's message) where a method cannot work."""


def every(count: int) -> dict[str, int]:
    return dict.fromkeys((ENC, LLAMA, QWEN2, GPT2), count)


def no_qkv(method: str) -> Refused:
    return Refused(rf"{method} would touch nothing at qkv in layers \[1\]: \S+ has no such role")


def fused_qkv(method: str, roles: str) -> Refused:
    return Refused(
        rf"{method} would touch nothing at {roles} in layers \[1\]: gpt2 has no such role .* name the role 'qkv'"
    )


NO_BIAS = Refused(r"bitfit would train nothing at .* in layers \[1\]: \S+ has no bias there")
NO_QKV = no_qkv("lora")
R = 4  # VeRA's rank in the cases below
PRE_NORM = Refused(r"--adapter_residual_norm needs a norm closing the ffn block .* is pre-norm")
# method string, extra options, closed-form count of method parameters (layer 1 only) per family, or the refusal
CASES = {
    "probe": ("probe", {}, every(0)),
    "bitfit": ("bitfit@1", {}, {ENC: 4 * D + FF + D + 2 * D, LLAMA: NO_BIAS, QWEN2: D + 2 * KVW,
                                GPT2: 3 * D + D + FF + D + 2 * D}),
    "lora": ("lora@1", {"lora_rank": 2, "lora_targets": "query,value"},
             {ENC: 2 * 2 * (D + D), LLAMA: 2 * (D + D) + 2 * (D + KVW), QWEN2: 2 * (D + D) + 2 * (D + KVW),
              GPT2: Refused(r"lora would touch nothing at query, value in layers \[1\]: gpt2 has no such role .* "
                            r"name the role 'qkv'")}),
    "lora_ffn": ("lora@1", {"lora_rank": 3, "lora_targets": "ffn_in,ffn_out"}, every(3 * (D + FF) * 2)),
    "lora_qkv": ("lora@1", {"lora_rank": 2, "lora_targets": "qkv"},
                 {ENC: NO_QKV, LLAMA: NO_QKV, QWEN2: NO_QKV, GPT2: 2 * (D + 3 * D)}),
    "adapter_ffn_seq": ("adapter@1", {"bottleneck_dim": 3}, every(2 * D * 3 + 3 + D)),
    "adapter_attn_par": ("adapter@1", {"bottleneck_dim": 3, "placement": "attn", "adapter_form": "parallel",
                                       "adapter_scaling": 4.0, "adapter_layernorm": True}, every(2 * D * 3 + 3 + D + 2 * D)),
    # a pruned adapter (SparseAdapter): half of each projection's 4 * D weights held at zero, not counted
    "adapter_pruned": ("adapter@1", {"bottleneck_dim": 4, "adapter_sparsity": 0.5, "adapter_prune": "random"},
                       every(D * 4 + 4 + D)),
    "adapter_residual_norm": ("adapter@1", {"bottleneck_dim": 3, "adapter_residual_norm": True},
                              {ENC: 2 * D * 3 + 3 + D + 2 * D, LLAMA: PRE_NORM, QWEN2: PRE_NORM, GPT2: PRE_NORM}),
    "prefix": ("prefix@1", {"prefix_length": 5, "prefix_reparam": False},
               {ENC: 5 * 2 * D, LLAMA: 5 * 2 * KVW, QWEN2: 5 * 2 * KVW, GPT2: 5 * 2 * D}),
    "prefix_mlp": ("prefix@1", {"prefix_length": 5, "prefix_hidden": 7},
                   {ENC: 5 * D + D * 7 + 7 + 7 * 2 * D + 2 * D, LLAMA: 5 * D + D * 7 + 7 + 7 * 2 * KVW + 2 * KVW,
                    QWEN2: 5 * D + D * 7 + 7 + 7 * 2 * KVW + 2 * KVW, GPT2: 5 * D + D * 7 + 7 + 7 * 2 * D + 2 * D}),
    "ffn": ("ffn@1", {}, {ENC: D * FF + FF + FF * D + D, LLAMA: 3 * D * FF, QWEN2: 3 * D * FF,
                          GPT2: D * FF + FF + FF * D + D}),
    "ffn_ln": ("ffn@1", {"train_layernorm": True},  # LayerNorm: weight and bias; RMSNorm: weight
               {ENC: D * FF + FF + FF * D + D + 2 * D, LLAMA: 3 * D * FF + D, QWEN2: 3 * D * FF + D,
                GPT2: D * FF + FF + FF * D + D + 2 * D}),
    "attn": ("attn@1", {}, {ENC: 4 * (D * D + D), LLAMA: D * D + 2 * D * KVW + D * D,
                            QWEN2: D * D + 2 * D * KVW + D * D + D + 2 * KVW, GPT2: D * 3 * D + 3 * D + D * D + D}),
    # (IA)^3: a vector per key and value output, and one over ffn_out's input (the FFN's inner width)
    "ia3": ("ia3@1", {}, {ENC: 2 * D + FF, LLAMA: 2 * KVW + FF, QWEN2: 2 * KVW + FF, GPT2: fused_qkv("ia3", "key, value")}),
    "ia3_qkv": ("ia3@1", {"ia3_targets": "qkv,ffn_out"},
                {ENC: no_qkv("ia3"), LLAMA: no_qkv("ia3"), QWEN2: no_qkv("ia3"), GPT2: 3 * D + FF}),
    # VeRA: d (rank) and b (output width) per adapted layer; the shared frozen A and B are buffers, not counted
    "vera": ("vera@1", {"vera_rank": R}, {ENC: 2 * (R + D), LLAMA: (R + D) + (R + KVW), QWEN2: (R + D) + (R + KVW),
                                          GPT2: fused_qkv("vera", "query, value")}),
    "vera_qkv": ("vera@1", {"vera_rank": R, "vera_targets": "qkv,ffn_out"},
                 {ENC: no_qkv("vera"), LLAMA: no_qkv("vera"), QWEN2: no_qkv("vera"), GPT2: (R + 3 * D) + (R + D)}),
    # sparse: exactly the budget of weight entries (of ffn_in and ffn_out); the index buffers are not counted
    "sparse": ("sparse@1", {"sparse_budget": 20}, every(20)),
}  # fmt: skip
ZERO_INIT = {"probe", "lora", "lora_ffn", "lora_qkv", "adapter_ffn_seq", "adapter_attn_par", "ia3", "ia3_qkv", "vera",
             "vera_qkv"}  # fmt: skip
PREFIX_CASES = {"prefix", "prefix_mlp"}
HEAD = 3 * D + 3  # the linear head of make(): 3 labels


def expected(arch: str, case: str) -> int | Refused:
    if case in PREFIX_CASES and not ARCHITECTURES[arch].supports_prefix:
        return Refused(rf"prefix tuning is not available for {arch}: ")
    return CASES[case][2][FAMILY[arch]]


def supported(arch: str, case: str) -> bool:
    return not isinstance(expected(arch, case), Refused)


def test_every_registered_method_has_a_case():
    assert {method.split("@")[0] for method, _, _ in CASES.values()} | {"full"} == set(METHODS)


def make(
    arch: str, method: str = "probe", pooling: str | None = None, reads_cache: bool = False, **options
) -> SequenceClassifier:
    torch.manual_seed(0)
    backbone = AutoModel.from_config(TINY_CONFIGS[arch]())
    pooling = pooling or ("last" if arch in DECODERS else "mean")
    return SequenceClassifier(
        backbone, HeadConfig(num_labels=3, pooling=pooling), peft_args=PeftArguments(method=method, **options),
        reads_cache=reads_cache,
    )  # fmt: skip


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (4, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def grid(refused: bool = False):
    """(arch, case, method, options, count) of every pair the method supports (or, with ``refused``, of every
    pair it refuses, with the expected message in place of the count)."""
    for arch in TINY_CONFIGS:
        for case, (method, options, _) in CASES.items():
            if supported(arch, case) != refused:
                yield pytest.param(arch, case, method, options, expected(arch, case), id=f"{arch}-{case}")


@pytest.mark.parametrize("arch,case,method,options,count", list(grid()))
def test_only_method_and_head_parameters_train_and_counts_match(arch, case, method, options, count):
    model = make(arch, method, **options)
    counts = model.parameter_counts()
    assert counts["method_params"] == count
    assert counts["head_params"] == HEAD
    assert counts["trainable_params"] == count + HEAD
    tuner = {id(p) for m in model.modules() if isinstance(m, TunerLayer) for p in m.tuner_parameters()}
    head_ids = {id(p) for p in model.head.parameters()}
    for name, param in model.backbone.named_parameters():
        if id(param) in tuner:
            assert param.requires_grad, name
    assert all(p.requires_grad for p in model.head.parameters())
    assert not any(id(p) in head_ids for p in model.backbone.parameters())
    assert bool(model.injection.targeted_modules) == (case != "probe")
    for path in model.injection.targeted_modules:  # every recorded module exists and sits in layer 1
        assert model.backbone.get_submodule(path) is not None
        assert path.startswith(f"{ARCHITECTURES[arch].layers}.1."), path


def _snapshot(module: nn.Module) -> dict:
    return {n: (type(m), [p.requires_grad for p in m.parameters(recurse=False)]) for n, m in module.named_modules()}


@pytest.mark.parametrize("arch,case,method,options,message", list(grid(refused=True)))
def test_refused_pairs_fail_with_a_reason_before_the_model_is_modified(arch, case, method, options, message):
    torch.manual_seed(0)
    backbone = AutoModel.from_config(TINY_CONFIGS[arch]())
    before = _snapshot(backbone)
    with pytest.raises(ConfigError, match=message):
        SequenceClassifier(
            backbone, HeadConfig(num_labels=2, pooling="mean"), peft_args=PeftArguments(method=method, **options)
        )
    assert _snapshot(backbone) == before


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


def pairs(cases) -> list:
    """(arch, case) of the given cases on every architecture that supports them."""
    return [pytest.param(a, c, id=f"{a}-{c}") for a in TINY_CONFIGS for c in sorted(cases) if supported(a, c)]


@pytest.mark.parametrize("arch,case", pairs(ZERO_INIT))
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


@pytest.mark.parametrize("arch", ["bert", "distilbert", "deberta-v2", "mpnet"])
@pytest.mark.parametrize("case", ["bitfit", "lora", "adapter_ffn_seq", "ffn", "attn", "ia3", "vera"])
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
        assert type(layer.get_submodule(spec.roles[other])).__name__ in ("Linear", "Conv1D")  # GPT-2's Conv1D


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_ffn_method_never_trains_the_attention_output_projection(arch):
    model = make(arch, "ffn@all", train_layernorm=True)
    spec = architecture_of(model.backbone)
    attention = [r for r in (*ATTENTION_ROLES, "attn_norm") if spec.has(r)]
    ffn = [r for r in ("ffn_in", "ffn_gate", "ffn_out", "ffn_norm") if spec.has(r)]
    assert len(attention) == (5 if arch != "gpt2" else 3) and len(ffn) == (
        3 if FAMILY[arch] == ENC or arch == "gpt2" else 4
    )
    for layer in layers_of(model.backbone, spec):
        for role in attention:
            assert not any(p.requires_grad for p in layer.get_submodule(spec.roles[role]).parameters()), role
        for role in ffn:  # the gate of a gated FFN included
            assert all(p.requires_grad for p in layer.get_submodule(spec.roles[role]).parameters()), role


@pytest.mark.parametrize(
    "arch,case",
    pairs(["lora", "lora_qkv", "adapter_attn_par", "prefix_mlp", "bitfit", "ffn", "ia3", "vera", "vera_qkv"]),
)
def test_saved_trainable_weights_reload_to_identical_logits(arch, case):
    method, options, _ = CASES[case]
    model = make(arch, method, **options)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    state = model.trainable_state_dict()
    assert sum(t.numel() for t in state.values()) == expected(arch, case) + HEAD
    fresh = make(arch, method, **options)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and not any(k in state for k in missing)
    model.eval(), fresh.eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, fresh(**inputs).logits)


@pytest.mark.parametrize(
    "arch,side",
    # encoders count absolute positions from the first column: right padding only
    [(a, "right") for a in ("bert", "roberta", "electra", "mpnet")]
    + [(a, s) for a in DECODERS for s in ("right", "left")],
)
def test_prefix_respects_padding(arch, side):
    model = make(arch, "prefix@all", prefix_length=3).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05) if param.requires_grad else None
    ids = torch.randint(5, 99, (1, 6))
    pads, ones = torch.zeros(1, 3, dtype=torch.long), [1] * 6
    padded = torch.cat([ids, pads] if side == "right" else [pads, ids], dim=1)
    mask = torch.tensor([ones + [0] * 3] if side == "right" else [[0] * 3 + ones])
    with torch.no_grad():
        alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        in_batch = model(input_ids=padded, attention_mask=mask).logits
    assert torch.allclose(alone, in_batch, atol=1e-5)


def test_prefix_without_a_cache_slot_is_attention_over_the_prefix_and_the_tokens():
    """MPNet's attention takes no cache: the prefix goes in as placeholder rows (``prefix_rows``). Each real token
    attends to the prefix keys (no position bias, no mask) and to the tokens (their relative position bias and
    mask), exactly; a LoRA on the same key and value projections leaves the prefix as it is."""
    import math

    model = make("mpnet", "prefix@0+lora@0", prefix_length=2, prefix_reparam=False, lora_targets="key,value").eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param)) if param.requires_grad else None
    backbone, inputs = model.backbone, batch()
    attn = backbone.encoder.layer[0].attention.attn
    seen = {}
    handle = attn.register_forward_hook(lambda module, args, out: seen.update(out=out[0]))
    with torch.no_grad():
        backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        handle.remove()
        x = backbone.embeddings(input_ids=inputs["input_ids"])
        (b, n, _), heads = x.shape, attn.num_attention_heads
        q, k, v = (f(x).view(b, n, heads, -1).transpose(1, 2) for f in (attn.q, attn.k, attn.v))
        prefix = attn.prefix.embedding.view(2, 2, heads, -1).permute(1, 2, 0, 3)  # (key/value, heads, 2, dim)
        keys, values = (torch.cat([prefix[i].expand(b, -1, -1, -1), t], dim=2) for i, t in enumerate((k, v)))
        scores = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores[..., 2:] += backbone.encoder.compute_position_bias(x)
        scores[..., 2:] += (1.0 - inputs["attention_mask"][:, None, None, :]) * torch.finfo(scores.dtype).min
        expected = attn.o((scores.softmax(-1) @ values).transpose(1, 2).reshape(b, n, -1))
    keep = inputs["attention_mask"].bool()
    assert seen["out"].shape == expected.shape and torch.allclose(seen["out"][keep], expected[keep], atol=1e-5)


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("method", ["prefix@all", "probe"])
def test_decoders_stay_causal_with_every_method_and_pad_either_side(arch, method):
    """A token's state depends on the tokens before it only (the prefix does not open the future), and a
    sequence gives the same logits alone, right-padded or left-padded in a batch."""
    model = make(arch, method, prefix_length=3).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05) if param.requires_grad else None
        ids = torch.randint(5, 99, (1, 7))
        changed = ids.clone()
        changed[0, 4:] = torch.randint(5, 99, (3,))
        hidden = [
            model.backbone(**model.architecture.inputs(x, torch.ones_like(x))).last_hidden_state for x in (ids, changed)
        ]
        assert torch.allclose(hidden[0][:, :4], hidden[1][:, :4], atol=1e-6)
        assert not torch.allclose(hidden[0][:, 4:], hidden[1][:, 4:], atol=1e-3)
        inputs = batch()
        lengths = inputs["attention_mask"].sum(1)
        alone = torch.cat([model(input_ids=inputs["input_ids"][i : i + 1, :n]).logits for i, n in enumerate(lengths)])
        left_ids, left_mask = torch.zeros_like(inputs["input_ids"]), torch.zeros_like(inputs["attention_mask"])
        for i, n in enumerate(lengths):
            left_ids[i, -n:], left_mask[i, -n:] = inputs["input_ids"][i, :n], 1
        right = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        left = model(input_ids=left_ids, attention_mask=left_mask).logits
    assert torch.allclose(alone, right, atol=1e-5) and torch.allclose(alone, left, atol=1e-5)


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_lora_merge_equals_unmerged_and_is_idempotent(arch):
    targets = [role for role in LINEAR_ROLES if ARCHITECTURES[arch].has(role)]  # every linear role it has
    model = make(arch, "lora@all", lora_targets=",".join(targets)).eval()
    assert len(model.injection.targeted_modules) == L * len(targets)
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


@pytest.mark.parametrize(
    "arch,method,options,pooling,message",
    [
        ("llama", "probe", {}, "cls", r"pooling='cls' reads the first token, which in the causal llama has seen"),
        ("llama", "bitfit@0,2", {"bitfit_targets": "attn_norm"}, "last",
         r"bitfit would train nothing at attn_norm in layers \[0, 2\]: llama has no bias there"),
        ("qwen2", "bitfit", {"bitfit_targets": "query,attn_out"}, "last",
         r"bitfit would train nothing at attn_out in layers \[0, 1, 2\]: qwen2 has no bias there"),
        ("bert", "lora@1", {"lora_targets": "query,ffn_gate"}, "mean",
         r"lora would touch nothing at ffn_gate in layers \[1\]: bert has no such role"),
        ("gpt2", "ffn@1", {"train_extra_roles": "key"}, "last",
         r"ffn would touch nothing at key in layers \[1\]: gpt2 has no such role .* name the role 'qkv'"),
        ("distilbert", "probe", {}, "pooler", r"pooling='pooler' needs a backbone with a pooler"),
    ],
)  # fmt: skip
def test_what_would_touch_nothing_or_read_nothing_is_refused_naming_it(arch, method, options, pooling, message):
    torch.manual_seed(0)
    backbone = AutoModel.from_config(TINY_CONFIGS[arch]())
    before = _snapshot(backbone)
    with pytest.raises((ConfigError, ValueError), match=message):
        SequenceClassifier(
            backbone, HeadConfig(num_labels=2, pooling=pooling), peft_args=PeftArguments(method=method, **options)
        )
    assert _snapshot(backbone) == before


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_the_role_table_matches_the_real_modules(arch):
    """Every path of the table exists in the model, with the kind of module the table says (a linear layer, a
    norm of the said type, the key/value width of the said number of heads)."""
    backbone = AutoModel.from_config(TINY_CONFIGS[arch]())
    spec = ARCHITECTURES[arch]
    layer = layers_of(backbone, spec)[0]
    assert len(layers_of(backbone, spec)) == L
    for role, path in spec.roles.items():
        module = layer.get_submodule(path)
        if role.endswith("_norm"):
            assert type(module).__name__.endswith(spec.norm), (role, type(module))
            assert (getattr(module, "bias", None) is not None) == (spec.norm == "LayerNorm"), role
        else:
            assert type(module).__name__ in ("Linear", "Conv1D"), role
    assert layer.get_submodule(spec.self_attention) is not None
    for path in (spec.final_norm, spec.pooler):
        assert path is None or type(backbone.get_submodule(path)).__name__ != "Identity"
    assert (spec.final_norm is not None) == (spec.norm_position == "pre")
    if spec.has("key"):
        key_width = layer.get_submodule(spec.roles["key"]).out_features
        assert key_width == spec.num_kv_heads(backbone.config) * spec.head_dim(backbone.config)
        assert key_width == (KVW if arch in DECODERS else D)
    assert spec.causal == (arch in DECODERS) and spec.own_head == ("last" if arch in DECODERS else "pooler")


def test_last_pooling_reads_the_last_kept_token_whichever_side_is_padded():
    hidden = torch.arange(2 * 5, dtype=torch.float).view(2, 5, 1)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [2.0, 9.0]
    assert pool(hidden, left, "last").flatten().tolist() == [4.0, 9.0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gpt2"])
def test_last_pooling_with_the_score_head_is_the_models_own_sequence_classifier(arch):
    """``--pooling last --head score`` computes what transformers' ``*ForSequenceClassification`` does (right
    padding with a pad id of its own, where transformers finds the last token too)."""
    from transformers import AutoModelForSequenceClassification

    config = TINY_CONFIGS[arch]()
    config.pad_token_id, config.num_labels = 0, 3
    torch.manual_seed(0)
    theirs = AutoModelForSequenceClassification.from_config(config).eval()
    base_prefix = theirs.base_model_prefix
    ours = SequenceClassifier(copy.deepcopy(getattr(theirs, base_prefix)), HeadConfig(num_labels=3, pooling="pooler", head="score"),
                              peft_args=PeftArguments(method="probe")).eval()  # fmt: skip
    assert ours.pooling == "last" and ours.head.out_proj.bias is None
    with torch.no_grad():
        ours.head.out_proj.weight.copy_(theirs.score.weight)
        inputs = {k: v for k, v in batch().items() if k != "labels"}
        inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 0)
        assert torch.allclose(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-5)


def test_each_method_owns_its_options_and_the_flat_arguments_keep_their_names():
    import dataclasses

    from peftlab.methods.base import SharedArguments, option_classes

    names = [f.name for f in dataclasses.fields(PeftArguments)]
    assert len(names) == len(set(names))
    owned = {cls: [f.name for f in dataclasses.fields(cls)] for cls in option_classes()}
    assert sum(owned.values(), []) == names
    assert owned[SharedArguments] == ["method", "target_layers", "num_hidden_layers"]
    assert owned[METHODS["lora"].options_class] == [
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_init",
        "lora_targets",
    ]
    assert METHODS["ffn"].options_class is METHODS["attn"].options_class
    for cls in option_classes():
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls
    for name in ("bottleneck_dim", "lora_rank", "prefix_length", "bitfit_targets", "adapter_residual_norm",
                 "lora_init", "train_extra_roles", "bitfit_offset", "placement", "prefix_hidden"):  # fmt: skip
        assert name in names
    args = PeftArguments(method="lora@1", lora_rank=3, bottleneck_dim=5)
    assert args.options_for(METHODS["lora"].options_class).lora_rank == 3
    assert dataclasses.asdict(args)["bottleneck_dim"] == 5


@pytest.mark.parametrize("arch,targets", [("llama", ["q_proj", "v_proj", "gate_proj"]), ("gpt2", ["c_attn", "c_fc"])])
def test_our_lora_equals_hf_peft_lora_on_decoders_and_conv1d(tmp_path, arch, targets):
    peft = pytest.importorskip("peft")
    from peftlab.methods.lora import export_peft

    roles = {"q_proj": "query", "v_proj": "value", "gate_proj": "ffn_gate", "c_attn": "qkv", "c_fc": "ffn_in"}
    torch.manual_seed(0)
    base = AutoModel.from_config(TINY_CONFIGS[arch]()).eval()
    base.save_pretrained(tmp_path / "base")
    ours = SequenceClassifier(copy.deepcopy(base), HeadConfig(num_labels=2, pooling="last"),
                              peft_args=PeftArguments(method="lora@0,2", lora_rank=4, lora_alpha=8,
                                                      lora_targets=",".join(roles[t] for t in targets))).eval()  # fmt: skip
    with torch.no_grad():
        for module in ours.modules():
            if isinstance(module, LoraLinear):
                module.lora_B.weight.normal_(std=0.2)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    run = ours.architecture.inputs(inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        expected = ours.backbone(**run).last_hidden_state
        export_peft(ours.backbone, tmp_path / "export", str(tmp_path / "base"))
        loaded = peft.PeftModel.from_pretrained(
            AutoModel.from_pretrained(tmp_path / "base"), tmp_path / "export"
        ).eval()
        assert torch.allclose(loaded(**run).last_hidden_state, expected, atol=1e-5)
        set_lora_merged(ours, True)  # a Conv1D's update is merged transposed
        assert torch.allclose(ours.backbone(**run).last_hidden_state, expected, atol=1e-5)
        set_lora_merged(ours, False)
