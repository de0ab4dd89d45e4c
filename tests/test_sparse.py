"""Sparse fine-tuning beyond the method x architecture matrix of test_methods.py: only the selected entries of a
weight ever change, the delta is held at those entries only, a saved run (indices recorded, values saved) reloads
to identical logits, the evaluation-time merge restores the weights bit for bit, each mask picks what it says
(magnitude: the largest |W|; fisher: the largest squared gradients; lt-sft: the entries that moved most in a
dense phase, then rewound), and bad budgets or roles are refused with the numbers before the model is modified."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_methods import FF, TINY_CONFIGS, D, batch, make
from test_new_methods import perturbed, save_run  # the trained-run helpers of the method tests
from transformers import AutoModel

from peftlab.errors import ConfigError
from peftlab.methods import PeftArguments
from peftlab.methods.lora import LoraLinear
from peftlab.methods.sparse import SparseLinear, pack_indices, unpack_indices
from peftlab.methods.sparse_choice import choose_fisher_mask, choose_lottery_mask
from peftlab.modeling import (
    MODEL_CONFIG_NAME,
    WEIGHTS_NAME,
    HeadConfig,
    SequenceClassifier,
    build_classifier,
    load_classifier,
)

ENTRIES = 2 * D * FF  # ffn_in and ffn_out of one layer of the tiny models


def sparse_layers(model: SequenceClassifier) -> dict[str, SparseLinear]:
    return {name: m for name, m in model.backbone.named_modules() if isinstance(m, SparseLinear)}


def inputs() -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch().items() if k != "labels"}


@pytest.mark.parametrize("mask", ["magnitude", "random"])
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_only_the_selected_entries_change_after_optimizer_steps(arch, mask):
    model = make(arch, "sparse@1", sparse_budget=60, sparse_mask=mask)
    layers = sparse_layers(model)
    assert len(layers) == 2 and sum(m.sparse_indices.numel() for m in layers.values()) == 60
    # The delta is held at the selected entries only: no dense trainable copy of a weight.
    trainable = {n: p for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert all(n.endswith(".sparse_values") for n in trainable) and sum(p.numel() for p in trainable.values()) == 60
    before = {n: m.linear.weight.detach().clone() for n, m in layers.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for step in range(3):
        optimizer.zero_grad()
        model(**batch(step)).loss.backward()
        optimizer.step()
    moved = 0
    for name, module in layers.items():
        assert torch.equal(module.linear.weight, before[name]), f"frozen {name} changed"
        effective, original = module.sparse_weight().detach().reshape(-1), before[name].reshape(-1)
        selected = torch.zeros(original.numel(), dtype=torch.bool)
        selected[module.sparse_indices] = True
        assert torch.equal(effective[~selected], original[~selected]), f"{name}: an entry outside the mask changed"
        moved += int((effective[selected] != original[selected]).sum())
    assert moved > 0


@pytest.mark.parametrize("mask", ["magnitude", "random", "fisher", "lt-sft"])
def test_a_saved_run_reloads_to_identical_logits_with_its_recorded_mask(tiny_bert, tmp_path, mask):
    torch.manual_seed(3)
    args = PeftArguments(method="sparse@1", sparse_budget=150, sparse_mask=mask, sparse_fisher_batches=2)
    model = build_classifier(tiny_bert, HeadConfig(num_labels=3, pooling="mean"), args)
    if mask in ("fisher", "lt-sft"):
        model.prepare_methods(lambda: [batch(0), batch(1), batch(2)])
        assert not any(m.pending for m in sparse_layers(model).values())
    perturbed(model)
    save_run(model, tmp_path / "run")
    state = json.loads((tmp_path / "run" / MODEL_CONFIG_NAME).read_text())["extra_state"]["sparse"]
    assert state["mask"] == mask and state["budget"] == 150 and not state["pending"]
    assert {"random": ("seed", 3), "fisher": ("fisher_batches", 2), "lt-sft": ("lt_steps", 3)}.get(
        mask, ("allocation", "global")
    ) in state.items()
    layers = sparse_layers(model)
    assert set(state["indices"]) == set(layers)
    for path, module in layers.items():
        assert torch.equal(unpack_indices(state["indices"][path]), module.sparse_indices)
    weights = load_file(str(tmp_path / "run" / WEIGHTS_NAME))  # the values only, beside the head
    assert all(k.endswith(".sparse_values") or k.startswith("head.") for k in weights)
    assert sum(t.numel() for k, t in weights.items() if not k.startswith("head.")) == 150
    torch.manual_seed(99)  # another random state: the mask comes from the record, not from a new draw
    reloaded = load_classifier(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs()).logits, model(**inputs()).logits)
    for path, module in sparse_layers(reloaded).items():
        assert torch.equal(module.sparse_indices, layers[path].sparse_indices)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])  # gpt2: a Conv1D's weight is stored in x out
def test_merge_for_evaluation_equals_unmerged_and_restores_the_weights_bit_for_bit(arch):
    model = perturbed(make(arch, "sparse@1", sparse_budget=300))
    layers = sparse_layers(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    storage = {n: (m.linear.weight.data_ptr(), m.linear.weight.detach().clone()) for n, m in layers.items()}
    with torch.no_grad():
        unmerged = model(**inputs()).logits
        with model.merged_for_eval():
            for name, module in layers.items():
                assert module.merged
                expected = storage[name][1] + module.delta_weight()
                assert torch.equal(module.linear.weight, expected)
            merged = model(**inputs()).logits
    assert torch.allclose(unmerged, merged, atol=1e-5)
    for name, param in model.named_parameters():
        assert torch.equal(param, params[name]), f"{name} not restored bit for bit"
    for name, module in layers.items():  # the original storage is back, unwritten
        pointer, copy = storage[name]
        assert module.linear.weight.data_ptr() == pointer and torch.equal(module.linear.weight, copy)
        assert not module.merged


def test_sparse_wraps_lora_on_the_same_layer_and_both_merge_and_restore():
    model = perturbed(make("bert", "sparse@1+lora@1", sparse_budget=40, lora_rank=2, lora_targets="ffn_in"))
    assert model.parameter_counts()["method_params"] == 40 + 2 * (D + FF)
    layers = sparse_layers(model)
    assert sum(isinstance(m.base_layer, LoraLinear) for m in layers.values()) == 1
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        unmerged = model(**inputs()).logits
        with model.merged_for_eval():
            merged = model(**inputs()).logits
        assert torch.allclose(unmerged, merged, atol=1e-5)
        # Both updates count: without the sparse delta the logits differ.
        for module in layers.values():
            module.sparse_values.zero_()
        assert not torch.allclose(model(**inputs()).logits, unmerged, atol=1e-4)
    for name, param in model.named_parameters():
        if not name.endswith("sparse_values"):
            assert torch.equal(param, params[name]), name


@pytest.mark.parametrize("offset", [False, True])
def test_bitfit_after_sparse_still_finds_the_wrapped_layers_biases(offset):
    model = make("bert", "sparse@1+bitfit@1", sparse_budget=20, bitfit_offset=offset)
    assert model.parameter_counts()["method_params"] == 20 + 4 * D + FF + D + 2 * D  # bitfit's own count, in full
    model(**batch()).loss.backward()


def test_magnitude_picks_the_largest_entries_over_all_targeted_matrices():
    model = make("bert", "sparse@1", sparse_budget=200)
    layers = sparse_layers(model)
    magnitudes = torch.cat([m.linear.weight.detach().abs().reshape(-1) for m in layers.values()])
    selected = torch.zeros(magnitudes.numel(), dtype=torch.bool)
    offset = 0
    for module in layers.values():
        selected[module.sparse_indices + offset] = True
        offset += module.linear.weight.numel()
    assert int(selected.sum()) == 200
    assert magnitudes[selected].min() >= magnitudes[~selected].max()
    # Chosen globally, not per matrix: a matrix of larger weights takes the whole budget.
    torch.manual_seed(0)
    backbone = AutoModel.from_config(TINY_CONFIGS["bert"]())
    with torch.no_grad():
        backbone.encoder.layer[1].output.dense.weight.mul_(10)
    scaled = SequenceClassifier(backbone, HeadConfig(num_labels=3, pooling="mean"),
                                peft_args=PeftArguments(method="sparse@1", sparse_budget=200))  # fmt: skip
    counts = {name.rsplit(".", 2)[-2]: m.sparse_indices.numel() for name, m in sparse_layers(scaled).items()}
    assert counts == {"intermediate": 0, "output": 200}


def test_fisher_picks_the_largest_squared_gradients_summed_over_its_batches():
    model = make("bert", "sparse@1", sparse_budget=100, sparse_mask="fisher", sparse_fisher_batches=2)
    reference = make("bert", "probe").eval()  # the same seed: the same backbone and head
    reference.head.load_state_dict(model.head.state_dict())
    weights = [reference.backbone.encoder.layer[1].intermediate.dense.weight,
               reference.backbone.encoder.layer[1].output.dense.weight]  # fmt: skip
    for weight in weights:
        weight.requires_grad_(True)
    scores = [torch.zeros_like(w) for w in weights]
    for step in range(2):
        reference.zero_grad()
        reference(**batch(step)).loss.backward()
        for score, weight in zip(scores, weights):
            score += weight.grad.square()
    flat = torch.cat([s.reshape(-1) for s in scores])
    expected = set(flat.topk(100).indices.tolist())
    counts = choose_fisher_mask(model, iter([batch(0), batch(1), batch(2)]))  # the first 2 only
    assert sum(counts.values()) == 100
    layers = list(sparse_layers(model).values())
    chosen = set(layers[0].sparse_indices.tolist()) | {
        i + weights[0].numel() for i in layers[1].sparse_indices.tolist()
    }
    assert chosen == expected
    assert model.injection.applied[0].extra_state()["fisher_batches"] == 2
    assert not any(p.grad is not None for p in model.parameters())  # choosing trained nothing
    # Then it trains like any other mask.
    model.train()
    model(**batch()).loss.backward()
    assert all(m.sparse_values.grad is not None for m in layers)


def with_dropout(method: str, dropout: float, **options) -> SequenceClassifier:
    torch.manual_seed(0)
    config = TINY_CONFIGS["bert"]()
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    return SequenceClassifier(AutoModel.from_config(config), HeadConfig(num_labels=3, pooling="mean"),
                              peft_args=PeftArguments(method=method, **options))  # fmt: skip


@pytest.mark.parametrize("dropout", [0.0, 0.1])  # 0.1: the dense phase trains in train mode, as fine-tuning does
def test_lt_sft_keeps_the_entries_that_moved_most_in_its_dense_phase_and_rewinds_everything_else(dropout):
    """The dense phase is fine-tuning the targeted matrices and the head (here against the same model with those
    weights trained directly, the same AdamW, batches and dropout draws); then the head, the random state and the
    entries are back where they were."""
    model = with_dropout("sparse@1", dropout, sparse_budget=100, sparse_mask="lt-sft", sparse_lt_epochs=1.5,
                         sparse_lt_learning_rate=1e-2)  # fmt: skip
    reference = with_dropout("probe", dropout)  # the same seed: the same backbone and head
    weights = [reference.backbone.encoder.layer[1].intermediate.dense.weight,
               reference.backbone.encoder.layer[1].output.dense.weight]  # fmt: skip
    start = [w.detach().clone() for w in weights]
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    epoch = [batch(0), batch(1)]  # 1.5 epochs of two batches: three steps, the third the first batch again
    for weight in weights:
        weight.requires_grad_(True)
    optimizer = torch.optim.AdamW([*weights, *reference.head.parameters()], lr=1e-2, weight_decay=0.0)
    torch.manual_seed(7)
    reference.train()
    for step in (0, 1, 0):
        optimizer.zero_grad()
        reference(**batch(step)).loss.backward()
        optimizer.step()
    moved = torch.cat([(w.detach() - s).abs().reshape(-1) for w, s in zip(weights, start)])
    expected = set(moved.topk(100).indices.tolist())
    torch.manual_seed(7)
    model.eval()
    counts = choose_lottery_mask(model, lambda: list(epoch))
    layers = list(sparse_layers(model).values())
    chosen = set(layers[0].sparse_indices.tolist()) | {i + weights[0].numel() for i in layers[1].sparse_indices.tolist()}  # fmt: skip
    assert sum(counts.values()) == 100 and len(chosen & expected) >= 99, len(chosen & expected)
    state = model.injection.applied[0].extra_state()
    assert (state["lt_steps"], state["lt_epochs"], state["lt_learning_rate"]) == (3, 1.5, 1e-2)
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head.items())  # the head rewound
    assert all(not m.sparse_values.any() for m in layers) and not model.training  # the entries at zero; the mode kept
    assert not any(p.grad is not None for p in model.parameters())


def test_lt_sft_leaves_the_random_state_as_it_found_it():
    model = make("bert", "sparse@1", sparse_budget=50, sparse_mask="lt-sft")
    torch.manual_seed(5)
    choose_lottery_mask(model, lambda: [batch(0)])
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.parametrize("mask,chooser", [("fisher", "choose_fisher_mask"), ("lt-sft", "choose_lottery_mask")])
def test_a_data_mask_that_was_never_chosen_refuses_to_run(mask, chooser):
    model = make("bert", "sparse@1", sparse_mask=mask)
    with pytest.raises(
        ConfigError, match=rf"--sparse_mask {mask}: .* has not been chosen .*{chooser}\(model, batches\)"
    ):
        model(**batch())
    with pytest.raises(ConfigError, match=r"choose_lottery_mask: the model was built with --sparse_mask magnitude"):
        choose_lottery_mask(make("bert", "sparse@1"), lambda: [batch()])
    with pytest.raises(ConfigError, match=r"--sparse_mask lt-sft: no training batch was given"):
        choose_lottery_mask(make("bert", "sparse@1", sparse_mask="lt-sft"), lambda: [])


def test_a_fisher_mask_that_was_never_chosen_refuses_to_run():
    model = make("bert", "sparse@1", sparse_mask="fisher")
    with pytest.raises(ConfigError, match=r"--sparse_mask fisher: .* has not been chosen .*"
                                          r"choose_fisher_mask\(model, batches\)"):  # fmt: skip
        model(**batch())
    with pytest.raises(ConfigError, match=r"has not been chosen"), model.merged_for_eval():
        pass
    with pytest.raises(ConfigError, match=r"choose_fisher_mask: the model was built with --sparse_mask magnitude"):
        choose_fisher_mask(make("bert", "sparse@1"), [batch()])


def test_a_fresh_model_computes_what_the_base_model_does_and_caches_below_its_layer():
    base, sparse = make("bert", "probe"), make("bert", "sparse@1", sparse_mask="random")
    sparse.head.load_state_dict(base.head.state_dict())
    with torch.no_grad():
        assert torch.equal(base.eval()(**inputs()).logits, sparse.eval()(**inputs()).logits)
    assert make("bert", "sparse@2", reads_cache=True).frozen_prefix == 2


def test_budget_as_a_fraction_and_the_random_mask_follows_the_runs_seed():
    model = make("bert", "sparse@1", sparse_budget=0.25, sparse_mask="random")
    assert model.parameter_counts()["method_params"] == ENTRIES // 4
    # Random: split over the matrices in proportion to their sizes (here equal), drawn from the run's seed.
    assert [m.sparse_indices.numel() for m in sparse_layers(model).values()] == [ENTRIES // 8] * 2
    again = make("bert", "sparse@1", sparse_budget=0.25, sparse_mask="random")  # make() seeds 0 each time
    torch.manual_seed(1)
    backbone = AutoModel.from_config(TINY_CONFIGS["bert"]())
    other = SequenceClassifier(backbone, HeadConfig(num_labels=3, pooling="mean"),
                               peft_args=PeftArguments(method="sparse@1", sparse_budget=0.25, sparse_mask="random"))  # fmt: skip
    first = [m.sparse_indices for m in sparse_layers(model).values()]
    assert all(torch.equal(a, m.sparse_indices) for a, m in zip(first, sparse_layers(again).values()))
    assert not all(torch.equal(a, m.sparse_indices) for a, m in zip(first, sparse_layers(other).values()))
    assert model.injection.applied[0].extra_state()["seed"] == 0
    assert other.injection.applied[0].extra_state()["seed"] == 1


@pytest.mark.parametrize(
    "options,message",
    [
        ({"sparse_budget": 0}, r"--sparse_budget 0 is not valid: give a count of entries \(an integer >= 1\) or a "
                               r"fraction in \(0, 1\)"),
        ({"sparse_budget": -5}, r"--sparse_budget -5 is not valid"),
        ({"sparse_budget": 2.5}, r"--sparse_budget 2.5 is not valid"),
        ({"sparse_budget": float("nan")}, r"--sparse_budget nan is not valid"),
        ({"sparse_mask": "lt_sft"}, r"--sparse_mask 'lt_sft' is not valid; choose one of magnitude, random, fisher, "
                                    r"lt-sft"),
        ({"sparse_lt_epochs": 0}, r"--sparse_lt_epochs must be a number > 0, got 0"),
        ({"sparse_lt_learning_rate": float("nan")}, r"--sparse_lt_learning_rate must be a number > 0, got nan"),
        ({"sparse_fisher_batches": 0}, r"--sparse_fisher_batches must be >= 1, got 0"),
        ({"sparse_targets": "ffn_inn"}, r"--sparse_targets 'ffn_inn': \['ffn_inn'\] not valid; choose from query"),
    ],
)  # fmt: skip
def test_bad_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        PeftArguments(**options)


@pytest.mark.parametrize(
    "arch,options,message",
    [
        ("bert", {"sparse_budget": 5000}, rf"--sparse_budget 5000 is more than the {ENTRIES} entries of ffn_in, "
                                          rf"ffn_out in layers \[1\] \(2 matrices\): give at most {ENTRIES}"),
        ("bert", {"sparse_budget": 0.0001}, rf"--sparse_budget 0.0001 of the {ENTRIES} entries of ffn_in, ffn_out in "
                                            r"layers \[1\] \(2 matrices\) is 0 entries"),
        ("bert", {"sparse_targets": "ffn_gate"}, r"sparse would touch nothing at ffn_gate in layers \[1\]: bert has no "
                                                 r"such role \(--sparse_targets"),
        ("llama", {"sparse_targets": "qkv"}, r"sparse would touch nothing at qkv in layers \[1\]: llama has no such"),
        ("gpt2", {"sparse_targets": "query"}, r"sparse would touch nothing at query .* name the role 'qkv'"),
    ],
)  # fmt: skip
def test_bad_budgets_and_roles_are_refused_with_the_numbers_before_the_model_is_modified(arch, options, message):
    torch.manual_seed(0)
    backbone = AutoModel.from_config(TINY_CONFIGS[arch]())
    before = {n: (type(m), [p.requires_grad for p in m.parameters(recurse=False)]) for n, m in backbone.named_modules()}
    with pytest.raises(ConfigError, match=message):
        SequenceClassifier(backbone, HeadConfig(num_labels=2, pooling="last"),
                           peft_args=PeftArguments(method="sparse@1", **options))  # fmt: skip
    after = {n: (type(m), [p.requires_grad for p in m.parameters(recurse=False)]) for n, m in backbone.named_modules()}
    assert before == after


def test_the_whole_targeted_matrix_is_a_valid_budget():
    assert make("bert", "sparse@1", sparse_budget=ENTRIES).parameter_counts()["method_params"] == ENTRIES


def test_a_saved_mask_that_does_not_fit_the_model_is_refused(tiny_bert, tmp_path):
    torch.manual_seed(0)
    model = build_classifier(tiny_bert, HeadConfig(num_labels=2, pooling="mean"),
                             PeftArguments(method="sparse@1", sparse_budget=10))  # fmt: skip
    save_run(model, tmp_path / "run")
    path = tmp_path / "run" / MODEL_CONFIG_NAME
    saved = json.loads(path.read_text())
    edited = json.loads(json.dumps(saved))
    edited["extra_state"]["sparse"]["mask"] = "random"
    path.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match=r"records a 'random' mask of 10 entries, but its options say --sparse_mask "
                                          r"magnitude of 10"):  # fmt: skip
        load_classifier(tmp_path / "run")
    edited = json.loads(json.dumps(saved))
    first = next(iter(edited["extra_state"]["sparse"]["indices"]))
    edited["extra_state"]["sparse"]["indices"][first] = pack_indices(torch.tensor([0, 10**6]))
    path.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match=r"is not sorted unique indices into its 2048 entries"):
        load_classifier(tmp_path / "run")


def test_a_trained_run_saves_the_values_and_reloads_through_run_glue(tiny_bert, rte_dir, tmp_path):
    from peftlab.lab.run import main

    out = tmp_path / "out"
    common = ["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir), "--method",
              "sparse@1", "--sparse_budget", "100", "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
              "--disable_tqdm", "True", "--seed", "7"]  # fmt: skip
    results = main([*common, "--output_dir", str(out)])
    assert results["method_params"] == 100
    saved = load_file(str(out / WEIGHTS_NAME))
    assert sum(t.numel() for k, t in saved.items() if not k.startswith("head.")) == 100
    again = main(["--model_name_or_path", str(out), "--task_name", "rte", "--glue_dir", str(rte_dir),
                  "--output_dir", str(tmp_path / "eval"), "--do_eval", "--disable_tqdm", "True"])  # fmt: skip
    assert again["eval_loss"] == pytest.approx(results["eval_loss"], abs=1e-6)
    # a fisher mask is chosen by the run itself before its first step, recorded, and reloads alike
    fisher = main([*common, "--output_dir", str(tmp_path / "fisher"), "--sparse_mask", "fisher",
                   "--sparse_fisher_batches", "2"])  # fmt: skip
    record = json.loads((tmp_path / "fisher" / "peftlab_model.json").read_text())
    state = record["extra_state"]["sparse"]
    assert state["mask"] == "fisher" and 1 <= state["fisher_batches"] <= 2 and not state["pending"]
    reloaded = main(["--model_name_or_path", str(tmp_path / "fisher"), "--task_name", "rte", "--glue_dir",
                     str(rte_dir), "--output_dir", str(tmp_path / "fisher_eval"), "--do_eval", "--disable_tqdm",
                     "True"])  # fmt: skip
    assert reloaded["eval_loss"] == pytest.approx(fisher["eval_loss"], abs=1e-6)


@pytest.mark.parametrize("mask", ["fisher", "lt-sft"])
def test_a_data_mask_is_chosen_in_bf16_and_recorded_without_saved_weights(tiny_bert, rte_dir, tmp_path, mask):
    """A bf16 backbone (--model_dtype) with a float32 head chooses its mask under the run's autocast; with
    --save_model false the mask and how it was chosen are in run_config.json, and the choice's time in the results."""
    from peftlab.lab.run import main
    from peftlab.methods.sparse import unpack_indices

    out = tmp_path / "out"
    results = main(["--model_name_or_path", tiny_bert, "--task_name", "rte", "--glue_dir", str(rte_dir), "--method",
                    "sparse@1", "--sparse_budget", "100", "--sparse_mask", mask, "--sparse_lt_epochs", "0.5",
                    "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "True",
                    "--bf16", "True", "--model_dtype", "bfloat16", "--save_model", "false", "--output_dir", str(out)])  # fmt: skip
    state = json.loads((out / "run_config.json").read_text())["method_state"]["sparse"]
    assert state["mask"] == mask and state["budget"] == 100 and not state["pending"]
    assert sum(unpack_indices(text).numel() for text in state["indices"].values()) == 100
    assert ("lt_steps" in state) == (mask == "lt-sft") and ("fisher_batches" in state) == (mask == "fisher")
    assert results["prepare_seconds"] > 0 and not (out / WEIGHTS_NAME).exists()


# -- pruned adapters (--adapter_sparsity): SparseAdapter's pruning at initialisation -----------------------------


def bottlenecks(model: SequenceClassifier) -> list:
    return [m.adapter for m in model.backbone.modules() if hasattr(m, "adapter") and hasattr(m.adapter, "masked")]


PRUNED = {"bottleneck_dim": 4, "adapter_sparsity": 0.75, "adapter_init": "model"}


@pytest.mark.parametrize("prune", ["random", "magnitude", "snip"])
def test_a_pruned_adapter_keeps_its_share_and_its_pruned_entries_stay_zero_through_training(prune):
    model = make("bert", "adapter@1", adapter_prune=prune, **PRUNED)
    if prune == "snip":
        model.prepare_methods(lambda: [batch(0), batch(1)])
    (bottleneck,) = bottlenecks(model)
    for linear, mask in ((bottleneck.down, bottleneck.down_mask), (bottleneck.up, bottleneck.up_mask)):
        assert int(mask.sum()) == linear.weight.numel() // 4  # 75 % pruned, per projection
        assert not linear.weight[~mask].any()
    assert model.parameter_counts()["method_params"] == 2 * D * 4 // 4 + 4 + D
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(3):
        optimizer.zero_grad()
        model(**batch(step)).loss.backward()
        optimizer.step()
    for linear, mask in ((bottleneck.down, bottleneck.down_mask), (bottleneck.up, bottleneck.up_mask)):
        assert not linear.weight[~mask].any() and linear.weight[mask].all()


def test_magnitude_and_snip_keep_the_largest_scores_of_each_projection():
    magnitude = make("bert", "adapter@1", adapter_prune="magnitude", **PRUNED)
    (kept,) = bottlenecks(magnitude)
    fresh = make("bert", "adapter@1", adapter_prune="random", bottleneck_dim=4, adapter_init="model")
    (dense,) = bottlenecks(fresh)  # the same seed: the same initialisation, unpruned
    for name in ("down", "up"):
        weight = getattr(dense, name).weight.detach().abs().reshape(-1)
        expected = set(weight.topk(weight.numel() // 4).indices.tolist())
        assert set(getattr(kept, f"{name}_mask").reshape(-1).nonzero().reshape(-1).tolist()) == expected
    snip = make("bert", "adapter@1", adapter_prune="snip", adapter_prune_batches=2, **PRUNED)
    reference = make("bert", "adapter@1", adapter_prune="random", bottleneck_dim=4, adapter_init="model").eval()
    (ref,) = bottlenecks(reference)
    scores = {name: torch.zeros_like(getattr(ref, name).weight) for name in ("down", "up")}
    for step in range(2):
        reference.zero_grad()
        reference(**batch(step)).loss.backward()
        for name, score in scores.items():
            weight = getattr(ref, name).weight
            score += (weight.grad * weight.detach()).abs()
    snip.prepare_methods(lambda: [batch(0), batch(1), batch(2)])  # the first 2 only
    (chosen,) = bottlenecks(snip)
    for name, score in scores.items():
        expected = set(score.reshape(-1).topk(score.numel() // 4).indices.tolist())
        assert set(getattr(chosen, f"{name}_mask").reshape(-1).nonzero().reshape(-1).tolist()) == expected
    assert snip.injection.applied[0].extra_state()["prune_batches"] == 2
    assert not any(p.grad is not None for p in snip.parameters())


def test_a_saved_pruned_adapter_reloads_its_recorded_masks_to_identical_logits(tiny_bert, tmp_path):
    torch.manual_seed(3)
    args = PeftArguments(method="adapter@1", adapter_prune="snip", **PRUNED)
    model = build_classifier(tiny_bert, HeadConfig(num_labels=3, pooling="mean"), args)
    model.prepare_methods(lambda: [batch(0)])
    perturbed(model)
    for bottleneck in bottlenecks(model):  # perturbed() moved every trainable entry: hold the pruned ones again
        bottleneck.set_masks({n: getattr(bottleneck, f"{n}_mask").reshape(-1).nonzero().reshape(-1) for n in ("down", "up")})  # fmt: skip
    save_run(model, tmp_path / "run")
    state = json.loads((tmp_path / "run" / MODEL_CONFIG_NAME).read_text())["extra_state"]["adapter"]
    assert state["prune"] == "snip" and state["sparsity"] == 0.75 and state["prune_batches"] == 1
    torch.manual_seed(99)
    reloaded = load_classifier(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs()).logits, model(**inputs()).logits)
    for a, b in zip(bottlenecks(reloaded), bottlenecks(model)):
        assert torch.equal(a.down_mask, b.down_mask) and torch.equal(a.up_mask, b.up_mask)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"adapter_sparsity": 1.0}, r"--adapter_sparsity 1 is not valid: give the share of entries pruned, in \[0, 1\)"),
        ({"adapter_sparsity": -0.1}, r"--adapter_sparsity -0.1 is not valid"),
        ({"adapter_sparsity": float("nan")}, r"--adapter_sparsity nan is not valid"),
        ({"adapter_sparsity": 0.5, "adapter_prune": "prune"}, r"--adapter_prune 'prune' is not valid; choose one of snip"),
        ({"adapter_sparsity": 0.5, "adapter_prune": "magnitude", "adapter_init": "zero"},
         r"--adapter_prune magnitude scores entries by their initial weights, and --adapter_init zero .* --adapter_prune random"),
        ({"adapter_prune_batches": 0}, r"--adapter_prune_batches must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_bad_pruning_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        PeftArguments(**options)
