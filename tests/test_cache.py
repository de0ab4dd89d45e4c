"""The frozen-prefix activation cache: same losses and gradients as without it, and never a stale file."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, DataCollatorWithPadding

import peftlab.cache
from peftlab.cache import (
    CachedCollator,
    FrozenPrefixCache,
    Need,
    cache_datasets,
    compute_cache,
    frozen_prefix_depth,
    need_of,
)
from peftlab.errors import ConfigError
from peftlab.lab.workspace import tokenize
from peftlab.methods import PeftArguments
from peftlab.modeling import HeadConfig, SequenceClassifier, build_classifier

SENTENCES = ["a short one", "a somewhat longer sentence with more words in it", "mid length text here", "x"]


@pytest.fixture
def features(tiny_bert):
    import datasets

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    data = datasets.Dataset.from_dict({"sentence": SENTENCES, "label": [0, 1, 1, 0], "idx": [0, 1, 2, 3]})
    return tokenizer, tokenize(data, ("sentence",), tokenizer, 32, False)


def model_for(tiny_bert: str, method: str, pooling: str = "mean"):
    torch.manual_seed(0)
    model = build_classifier(
        tiny_bert, HeadConfig(num_labels=2, pooling=pooling), PeftArguments(method=method), reads_cache=True
    )
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "method,pooling,depth",
    [("lora@1", "mean", 1), ("adapter@1", "cls", 1), ("bitfit@-1", "mean", 1), ("probe", "mean", 2), ("probe", "pooler", 2), ("prefix@1", "mean", 1)],
)  # fmt: skip
def test_cache_gives_the_same_losses_and_gradients(tiny_bert, features, tmp_path, method, pooling, depth):
    tokenizer, data = features
    model = model_for(tiny_bert, method, pooling)
    assert frozen_prefix_depth(model.backbone) == depth
    rows = [{k: data[i][k] for k in ("input_ids", "attention_mask", "token_type_ids", "label")} for i in range(4)]
    plain_batch = DataCollatorWithPadding(tokenizer)(rows)
    with torch.no_grad():  # make trainable parts non-trivial so the comparison means something
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    expected_loss, expected_grads = loss_and_grads(model, plain_batch)
    wrapped = cache_datasets(model, {"train": data}, tokenizer, FrozenPrefixCache(model.backbone, tmp_path))
    assert model.frozen_prefix == depth
    cached_batch = CachedCollator(tokenizer)([wrapped["train"][i] for i in range(4)])
    loss, grads = loss_and_grads(model, cached_batch)
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], expected_grads[name], atol=1e-6), name


def test_full_fine_tuning_and_layer_zero_methods_cache_nothing(tiny_bert):
    assert frozen_prefix_depth(model_for(tiny_bert, "full").backbone) == 0
    assert frozen_prefix_depth(model_for(tiny_bert, "lora@0").backbone) == 0
    assert frozen_prefix_depth(model_for(tiny_bert, "ffn@1+lora@0").backbone) == 0


def test_cache_is_reused_keyed_and_rebuilt_when_corrupt(tiny_bert, features, tmp_path):
    tokenizer, data = features
    model = model_for(tiny_bert, "lora@1")
    need = need_of(model)
    assert need == Need(1, "hidden")

    def get(features, cache=None):
        return (cache or FrozenPrefixCache(model.backbone, tmp_path)).get(features, need, tokenizer)

    first = get(data)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    again = get(data)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert [t.shape[0] for t in first] == [len(ids) for ids in data["input_ids"]]
    # Other inputs or other frozen weights give another key, never the old file.
    get(data.select(range(3)))
    row = model.backbone.embeddings.word_embeddings.weight[5].detach().clone()
    with torch.no_grad():
        model.backbone.embeddings.word_embeddings.weight[5] += 1.0
    get(data)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    with torch.no_grad():
        model.backbone.embeddings.word_embeddings.weight[5] = row
    # A damaged file is detected and rebuilt: its data, its offsets (the checksum covers both), or the whole file.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(files[0]), "pt") as handle:
        metadata = handle.metadata()
    pristine = {k: t.clone() for k, t in load_file(str(files[0])).items()}
    for tensor, damage in (("data", lambda t: t.add_(1.0)), ("offsets", lambda t: t.__setitem__(2, t[2] + 1))):
        tensors = load_file(str(files[0]))
        damage(tensors[tensor])
        save_file(tensors, str(files[0]), metadata=metadata)
        rebuilt = get(data)
        assert all(torch.equal(a, b) for a, b in zip(first, rebuilt)), tensor
        assert all(torch.equal(t, pristine[k]) for k, t in load_file(str(files[0])).items()), tensor  # rewritten
    files[0].write_bytes(b"not a safetensors file")
    assert all(torch.equal(a, b) for a, b in zip(first, get(data)))


def test_one_pass_fills_every_planned_need_of_a_split(tiny_bert, features, tmp_path, monkeypatch):
    """Runs at several layers and probes with several poolings share ONE forward pass over each split."""
    tokenizer, data = features
    backbone = model_for(tiny_bert, "probe").backbone
    passes = []
    compute = peftlab.cache.compute_cache
    monkeypatch.setattr(peftlab.cache, "compute_cache", lambda *a, **k: passes.append(a[2]) or compute(*a, **k))
    cache = FrozenPrefixCache(backbone, tmp_path)
    needs = [Need(1, "hidden"), Need(2, "mean"), Need(2, "cls"), Need(1, "mean")]
    for need in needs:
        cache.plan(need)
    got = {need: cache.get(data, need, tokenizer) for need in needs}
    assert len(passes) == 1 and sorted(passes[0]) == sorted(needs)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    for need in needs:  # each as if computed on its own
        alone = compute(backbone, data, [need], tokenizer)[need]
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got[need], alone)), need
    # A new process reads them from disk: no pass at all.
    fresh = FrozenPrefixCache(backbone, tmp_path)
    for need in needs:
        fresh.plan(need)
    assert all(torch.equal(a, b) for a, b in zip(fresh.get(data, Need(2, "cls"), tokenizer), got[Need(2, "cls")]))
    assert len(passes) == 1


def test_a_split_never_reads_the_tensors_of_a_freed_one_that_had_its_id(tiny_bert, features, tmp_path, monkeypatch):
    """Python reuses a freed object's id: the auto layer's selection splits (new datasets each run, several runs in
    one sweep process) once read another split's tensors. Here every dataset gets the same id."""
    tokenizer, data = features
    backbone = model_for(tiny_bert, "lora@1").backbone
    need = Need(1, "hidden")
    cache = FrozenPrefixCache(backbone, tmp_path)
    monkeypatch.setattr(peftlab.cache, "id", lambda obj: 1, raising=False)
    first = data.select([0, 1])
    cache.plan(Need(2, "mean"), first)
    cache.get(first, need, tokenizer)
    del first
    second = data.select([2, 3])  # as long as the first: a stale key would go unnoticed
    got = cache.get(second, need, tokenizer)
    alone = compute_cache(backbone, second, [need], tokenizer)[need]
    assert all(a.shape == b.shape and torch.allclose(a, b, atol=1e-5) for a, b in zip(got, alone))
    assert cache.planned_for.get(second) is None  # the first split's plan is not the second's
    assert len(cache.planned_for) == 0 and len(cache._input_digests) == 1  # the dead split's entries are gone


def test_probe_of_a_truncated_model_reads_the_same_cache_as_the_full_model(tiny_bert, features, tmp_path):
    """The mean-pooled output of layer 0 is one cache entry, whether the probe's model was cut to one layer
    (--num_hidden_layers 1) or a full model's pass computed it."""
    tokenizer, data = features
    full = model_for(tiny_bert, "probe").backbone
    torch.manual_seed(0)
    truncated = build_classifier(
        tiny_bert, HeadConfig(num_labels=2, pooling="mean"), PeftArguments(method="probe", num_hidden_layers=1)
    )
    assert need_of(truncated) == Need(1, "mean")
    cache = FrozenPrefixCache(full, tmp_path)
    assert cache.key(data, Need(1, "mean")) == FrozenPrefixCache(truncated.backbone, tmp_path).key(
        data, Need(1, "mean")
    )
    via_full = cache.get(data, Need(1, "mean"), tokenizer)
    with torch.no_grad():
        rows = [{k: data[i][k] for k in ("input_ids", "attention_mask", "token_type_ids")} for i in range(4)]
        direct = truncated.eval().pooled_features(**DataCollatorWithPadding(tokenizer)(rows))
    assert torch.allclose(torch.stack(via_full), direct, atol=1e-5)


def test_run_glue_with_cache_matches_metrics_without_it(tiny_bert_no_dropout, rte_dir, tmp_path):
    """With dropout 0 (the cache computes frozen layers without dropout), a whole run gives the same metrics."""
    from peftlab.lab.run import main

    def run(out, *extra):
        return main(["--model_name_or_path", tiny_bert_no_dropout, "--task_name", "rte", "--glue_dir", str(rte_dir),
                     "--output_dir", str(tmp_path / out), "--method", "adapter@1", "--pooling", "mean",
                     "--head_dropout", "0", "--do_train", "--do_eval", "--num_train_epochs", "2",
                     "--per_device_train_batch_size", "4", "--disable_tqdm", "True", *extra])  # fmt: skip

    plain = run("plain", "--cache_frozen_prefix", "false")
    cached = run("cached", "--cache_frozen_prefix", "--frozen_cache_dir", str(tmp_path / "cache"))
    assert cached["eval_loss"] == pytest.approx(plain["eval_loss"], abs=1e-5)
    assert cached["eval_accuracy"] == plain["eval_accuracy"]


@pytest.mark.parametrize("method,depth", [("lora@1", 1), ("probe", 2)])
def test_cache_batches_examples_of_similar_length_and_keeps_their_order(
    tiny_bert, features, monkeypatch, method, depth
):
    tokenizer, data = features
    model = model_for(tiny_bert, method)
    widths = []
    collate = peftlab.cache._collate_tokens
    monkeypatch.setattr(
        peftlab.cache, "_collate_tokens", lambda *a: widths.append(collate(*a)["input_ids"].shape[1]) or collate(*a)
    )
    need = need_of(model)
    cached = compute_cache(model.backbone, data, [need], tokenizer, batch_size=2)[need]
    lengths = sorted(len(ids) for ids in data["input_ids"])
    assert widths == [lengths[1], lengths[3]]  # the two shortest together, then the two longest
    for i, tensor in enumerate(cached):  # each example as if it went alone, unpadded
        alone = compute_cache(model.backbone, data.select([i]), [need], tokenizer)[need][0]
        assert tensor.shape == alone.shape and torch.allclose(tensor, alone, atol=1e-5), i


# --------------------------------------------------------------------------------------------------------------
# Every architecture of the role table: the cache is exact (decoders: rotary positions, causal mask, final norm,
# left and right padding)
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundled_tokenizer():
    from peftlab.modeling import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(None))


def random_features(lengths=(3, 9, 6, 1, 7)):
    import datasets

    generator = torch.Generator().manual_seed(1)
    ids = [torch.randint(5, 99, (n,), generator=generator).tolist() for n in lengths]
    return datasets.Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * n for n in lengths], "label": [i % 3 for i in range(len(ids))]}
    )


def cache_cases():
    from test_methods import DECODERS, TINY_CONFIGS, supported

    for arch in TINY_CONFIGS:
        for method, case in (("adapter@1", "adapter_ffn_seq"), ("prefix@2", "prefix"), ("probe", "probe")):
            for side in ("right", "left") if arch in DECODERS else ("right",):
                if supported(arch, case):
                    yield pytest.param(arch, method, side, id=f"{arch}-{method}-{side}")


@pytest.mark.parametrize("arch,method,side", list(cache_cases()))
def test_cache_is_exact_on_every_architecture(arch, method, side, bundled_tokenizer, tmp_path):
    """Losses and gradients with the cache equal those without it: the layers above the cache get the mask, the
    rotary positions and (for a probe's pooled features) the final norm the model itself gives them."""
    from test_methods import make

    tokenizer = copy.deepcopy(bundled_tokenizer)
    tokenizer.padding_side = side
    data = random_features()
    model = make(arch, method, pooling="last", reads_cache=True, bottleneck_dim=3, prefix_length=2, prefix_hidden=8)
    assert not [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]  # the tiny configs have none
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    rows = [{k: data[i][k] for k in ("input_ids", "attention_mask", "label")} for i in range(len(data))]
    expected_loss, expected_grads = loss_and_grads(model, DataCollatorWithPadding(tokenizer)(rows))
    wrapped = cache_datasets(model, {"train": data}, tokenizer, FrozenPrefixCache(model.backbone, tmp_path))
    assert model.frozen_prefix == (1 if method.startswith("adapter") else 2 if method.startswith("prefix") else 3)
    loss, grads = loss_and_grads(model, CachedCollator(tokenizer)([wrapped["train"][i] for i in range(len(data))]))
    assert torch.allclose(loss, expected_loss, atol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], expected_grads[name], atol=1e-5), name


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_a_truncated_decoder_probe_reads_the_cache_of_the_full_model(arch, bundled_tokenizer, tmp_path):
    """The output of a decoder cut to one layer goes through the final norm; the cache's pooled features of
    layer 1 computed by the full model do too."""
    from test_methods import make

    data = random_features()
    full, truncated = make(arch, "probe"), make(arch, "probe", num_hidden_layers=1)
    need = need_of(truncated)
    assert need == Need(1, "last")
    via_full = FrozenPrefixCache(full.backbone, tmp_path).get(data, need, bundled_tokenizer)
    rows = [{k: data[i][k] for k in ("input_ids", "attention_mask")} for i in range(len(data))]
    with torch.no_grad():
        direct = truncated.eval().pooled_features(**DataCollatorWithPadding(bundled_tokenizer)(rows))
    assert torch.allclose(torch.stack(via_full), direct, atol=1e-5)


def test_an_architecture_that_cannot_run_from_layer_k_refuses_the_cache():
    from test_methods import _BERT_KW
    from transformers import AutoModel, DebertaV2Config

    torch.manual_seed(0)
    backbone = AutoModel.from_config(DebertaV2Config(**_BERT_KW, conv_kernel_size=3))
    model = SequenceClassifier(
        backbone,
        HeadConfig(num_labels=2, pooling="mean"),
        peft_args=PeftArguments(method="adapter@1", bottleneck_dim=4),
    )
    with pytest.raises(ConfigError, match=r"--cache_frozen_prefix is not available for this deberta-v2: its conv"):
        need_of(model)
    assert frozen_prefix_depth(model.backbone) == 0


def test_a_model_not_built_to_read_the_cache_is_refused(tiny_bert, features, tmp_path):
    tokenizer, data = features
    model = build_classifier(tiny_bert, HeadConfig(num_labels=2, pooling="mean"), PeftArguments(method="adapter@1"))
    assert model.frozen_prefix == 0
    with pytest.raises(ValueError, match="reads_cache=True"):
        cache_datasets(model, {"train": data}, tokenizer, FrozenPrefixCache(model.backbone, tmp_path))


@pytest.mark.parametrize(
    "extra,cached",
    [
        (["--method", "adapter@1"], True),  # not given: on, the layer below the adapter is frozen
        (["--method", "adapter@1", "--cache_frozen_prefix", "false"], False),
        (["--method", "adapter@0"], False),  # layer 0 trains: nothing to cache, silently off
        (["--method", "full"], False),
        (["--method", "adapter@1", "--do_train", "false", "--do_eval"], False),  # nothing trains
    ],
)
def test_the_cache_is_on_by_default_where_it_can_serve_the_run(tiny_bert, rte_dir, tmp_path, capsys, extra, cached):
    from peftlab.lab.run import main

    out = tmp_path / "out"
    main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir), "--output_dir",
          str(out), "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--disable_tqdm", "True",
          "--frozen_cache_dir", str(tmp_path / "cache"), *extra])  # fmt: skip
    record = json.loads((out / "run_config.json").read_text())
    assert record["training_args"]["cache_frozen_prefix"] is cached
    assert record["frozen_layers_mode"].startswith("eval" if cached else "train")
    by_default = "frozen     layers below 1 are computed once, without dropout, and cached (by default: "
    assert (by_default in capsys.readouterr().out) is cached


def test_a_cache_folder_that_cannot_be_made_turns_the_default_off_but_refuses_the_flag(tiny_bert, rte_dir, tmp_path):
    from peftlab.lab.run import main

    (tmp_path / "FILE").write_text("")
    common = ["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir), "--method",
              "adapter@1", "--num_train_epochs", "1", "--disable_tqdm", "True", "--frozen_cache_dir",
              str(tmp_path / "FILE" / "sub")]  # fmt: skip
    main([*common, "--output_dir", str(tmp_path / "a")])
    assert json.loads((tmp_path / "a" / "run_config.json").read_text())["training_args"]["cache_frozen_prefix"] is False
    with pytest.raises(ConfigError, match=r"The frozen-prefix cache folder .* cannot be made"):
        main([*common, "--output_dir", str(tmp_path / "b"), "--cache_frozen_prefix"])
