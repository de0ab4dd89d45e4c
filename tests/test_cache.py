"""The frozen-prefix activation cache: same losses and gradients as without it, and never a stale file."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, DataCollatorWithPadding

import peftlab.cache
from peftlab.cache import CachedCollator, cache_datasets, compute_cache, frozen_prefix_depth, load_or_compute
from peftlab.methods import PeftArguments
from peftlab.modeling import HeadConfig, build_classifier
from peftlab.run import tokenize

SENTENCES = ["a short one", "a somewhat longer sentence with more words in it", "mid length text here", "x"]


@pytest.fixture
def features(tiny_bert):
    import datasets

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    data = datasets.Dataset.from_dict({"sentence": SENTENCES, "label": [0, 1, 1, 0], "idx": [0, 1, 2, 3]})
    return tokenizer, tokenize(data, ("sentence",), tokenizer, 32, False)


def model_for(tiny_bert: str, method: str, pooling: str = "mean"):
    torch.manual_seed(0)
    model = build_classifier(tiny_bert, HeadConfig(num_labels=2, pooling=pooling), PeftArguments(method=method))
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
    got_depth, wrapped = cache_datasets(model, {"train": data}, tokenizer, tmp_path)
    assert got_depth == depth
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
    first = load_or_compute(model, data, 1, tokenizer, tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    again = load_or_compute(model, data, 1, tokenizer, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert [t.shape[0] for t in first] == [len(ids) for ids in data["input_ids"]]
    # Other inputs or other frozen weights give another key, never the old file.
    load_or_compute(model, data.select(range(3)), 1, tokenizer, tmp_path)
    with torch.no_grad():
        model.backbone.embeddings.word_embeddings.weight[5] += 1.0
    load_or_compute(model, data, 1, tokenizer, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    # A damaged file is detected and rebuilt.
    raw = bytearray(files[0].read_bytes())
    raw[-5] ^= 0xFF
    files[0].write_bytes(bytes(raw))
    with torch.no_grad():
        model.backbone.embeddings.word_embeddings.weight[5] -= 1.0
    rebuilt = load_or_compute(model, data, 1, tokenizer, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first, rebuilt))
    files[0].write_bytes(b"not a safetensors file")
    assert all(torch.equal(a, b) for a, b in zip(first, load_or_compute(model, data, 1, tokenizer, tmp_path)))


def test_run_glue_with_cache_matches_metrics_without_it(tiny_bert_no_dropout, rte_dir, tmp_path):
    """With dropout 0 (the cache computes frozen layers without dropout), a whole run gives the same metrics."""
    from peftlab.run import main

    def run(out, *extra):
        return main(["--model_name_or_path", tiny_bert_no_dropout, "--task_name", "rte", "--glue_dir", str(rte_dir),
                     "--output_dir", str(tmp_path / out), "--method", "adapter@1", "--pooling", "mean",
                     "--head_dropout", "0", "--do_train", "--do_eval", "--num_train_epochs", "2",
                     "--per_device_train_batch_size", "4", "--disable_tqdm", "True", *extra])  # fmt: skip

    plain = run("plain")
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
    cached = compute_cache(model, data, depth, tokenizer, batch_size=2)
    lengths = sorted(len(ids) for ids in data["input_ids"])
    assert widths == [lengths[1], lengths[3]]  # the two shortest together, then the two longest
    for i, tensor in enumerate(cached):  # each example as if it went alone, unpadded
        alone = compute_cache(model, data.select([i]), depth, tokenizer)[0]
        assert tensor.shape == alone.shape and torch.allclose(tensor, alone, atol=1e-5), i
