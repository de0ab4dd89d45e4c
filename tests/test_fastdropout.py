"""peftlab.fastdropout: the masks have the asked keep rate and are deterministic under a seed; without dropout
the model computes exactly what it computed before the swap; a run with --fast_dropout trains."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModel, BertConfig

from peftlab.fastdropout import FastDropout, fast_dropout, keep_mask, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_the_mask_keeps_one_minus_p(p):
    torch.manual_seed(0)
    mask = keep_mask((400, 1000), p)
    share = mask.float().mean().item()
    assert abs(share - (1 - p)) < 5 * (p * (1 - p) / mask.numel()) ** 0.5 + 1 / 32768, share
    # the four 15-bit values of one word are not tied to each other
    pairs = mask.view(-1, 4).float()
    assert abs((pairs[:, 0] * pairs[:, 3]).mean().item() - (1 - p) ** 2) < 0.01


def test_masks_follow_the_seed():
    torch.manual_seed(3)
    first = keep_mask((7, 9, 5), 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask((7, 9, 5), 0.1)) and first.shape == (7, 9, 5)


def test_dropout_scales_what_it_keeps_and_passes_gradients_only_there():
    x = torch.ones(64, 64, requires_grad=True)
    y = fast_dropout(x, 0.25, True)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert fast_dropout(x, 0.25, False) is x
    assert torch.equal(FastDropout(0.25).eval()(x), x)


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    return AutoModel.from_config(config)


def inputs():
    ids = torch.randint(1, 100, (3, 8), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])}


def test_the_swap_changes_nothing_in_evaluation_nor_without_dropout():
    model = tiny().eval()
    fast = copy.deepcopy(model)
    assert use_fast_dropout(fast) > 0
    assert not any(type(m) is torch.nn.Dropout for m in fast.modules())
    with torch.no_grad():
        assert torch.allclose(model(**inputs()).last_hidden_state, fast(**inputs()).last_hidden_state, atol=1e-6)
    model.train(), fast.train()
    for module in [*model.modules(), *fast.modules()]:
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for module in fast.modules():  # the attention path of fast_dropout, with a rate too small to drop anything
        if hasattr(module, "attention_head_size"):
            module.dropout.p = 1e-9
    with torch.no_grad():
        assert torch.allclose(model(**inputs()).last_hidden_state, fast(**inputs()).last_hidden_state, atol=1e-5)


def test_training_with_it_drops_in_attention_and_hidden_states():
    model = tiny().train()
    use_fast_dropout(model)
    torch.manual_seed(0)
    a = model(**inputs()).last_hidden_state
    torch.manual_seed(0)
    b = model(**inputs()).last_hidden_state
    torch.manual_seed(1)
    c = model(**inputs()).last_hidden_state
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_a_run_with_fast_dropout_trains_and_records_it(tiny_bert, rte_dir, tmp_path):
    from peftlab.lab.run import main

    out = tmp_path / "run"
    main(["--task_name", "rte", "--glue_dir", str(rte_dir), "--model_name_or_path", tiny_bert, "--method",
          "adapter@1", "--bottleneck_dim", "2", "--fast_dropout", "true", "--bf16", "true", "--num_train_epochs", "1",
          "--per_device_train_batch_size", "4", "--output_dir", str(out), "--save_model", "false"])  # fmt: skip
    config = json.loads((out / "run_config.json").read_text())
    assert config["model_args"]["fast_dropout"] is True
    assert "eval_accuracy" in json.loads((out / "all_results.json").read_text())
