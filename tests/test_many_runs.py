"""Many runs in one process give each run exactly what it gives alone, and share what can be shared."""

from __future__ import annotations

import json

import pytest
import torch

from peftlab.lab.checks import prepare
from peftlab.lab.parsing import parse_args
from peftlab.lab.run import main, run_many
from peftlab.lab.workspace import Workspace, make_model


def args(model: str, glue, out, method: str, seed: int, **extra) -> list[str]:
    flags = [f"--{k}={v}" for k, v in extra.items()]
    return ["--model_name_or_path", model, "--task_name", "rte", "--glue_dir", str(glue), "--output_dir", str(out),
            "--method", method, "--seed", str(seed), "--protocol", "paper", "--num_train_epochs", "3",
            "--per_device_train_batch_size", "4", "--disable_tqdm", "True", *flags]  # fmt: skip


SCORES = ("eval_loss", "eval_accuracy", "train_loss", "best_evaluation", "last_evaluation", "evaluations")


def comparable(results: dict) -> dict:
    drop = ("runtime", "per_second")
    clean = lambda d: {k: v for k, v in d.items() if not k.endswith(drop)} if isinstance(d, dict) else d  # noqa: E731
    return {k: ([clean(e) for e in results[k]] if k == "evaluations" else clean(results[k])) for k in SCORES}


@pytest.mark.parametrize("cache", [False, True])
def test_a_run_among_others_in_one_process_is_bit_identical_to_the_run_alone(tiny_bert, rte_dir, tmp_path, cache):
    """Dropout on, several methods and seeds before it in the same process: nothing it inherits (RNG state, shared
    backbone, caches in memory, LoRA's merge on a shared weight) changes a single bit of its metrics."""
    extra = {"cache_frozen_prefix": "true", "frozen_cache_dir": str(tmp_path / "cache")} if cache else {"cache_frozen_prefix": "false"}  # fmt: skip
    target = ("lora@1", 5)
    alone = main(args(tiny_bert, rte_dir, tmp_path / "alone", *target, **extra))
    others = [("adapter@1", 3), ("probe", 5), ("full", 4), ("bitfit@1", 5), ("lora@1", 6), ("prefix@1", 5)]
    outcomes = run_many(
        [args(tiny_bert, rte_dir, tmp_path / f"run{i}", m, s, **extra) for i, (m, s) in enumerate(others)]
        + [args(tiny_bert, rte_dir, tmp_path / "together", *target, **extra)]
    )
    assert comparable(outcomes[-1]) == comparable(alone)
    saved = json.loads((tmp_path / "together" / "all_results.json").read_text())
    assert comparable(saved) == comparable(json.loads((tmp_path / "alone" / "all_results.json").read_text()))


def test_one_runs_num_hidden_layers_does_not_truncate_the_next_runs_model(tiny_bert, rte_dir, tmp_path):
    """The checks of all runs share one config: a run that truncates the model (the per-layer probe) leaves it
    whole for the next (before: the second check saw 1 layer and refused --num_hidden_layers 2)."""
    ws = Workspace()
    specs = [parse_args(args(tiny_bert, rte_dir, tmp_path / str(k), "probe", 1, num_hidden_layers=k)) for k in (1, 2)]
    plans = [prepare(ws, spec) for spec in specs]
    assert ws.config(plans[0].model_path, plans[0].model_args).num_hidden_layers == 2
    one, two = (make_model(ws, plan) for plan in plans)
    assert (len(one.backbone.encoder.layer), len(two.backbone.encoder.layer)) == (1, 2)


def test_runs_share_the_frozen_backbone_and_never_write_it(tiny_bert, rte_dir, tmp_path):
    ws = Workspace()
    specs = [parse_args(args(tiny_bert, rte_dir, tmp_path / m, m, 1)) for m in ("lora@1", "bitfit@1", "full")]
    plans = [prepare(ws, spec) for spec in specs]
    pristine = ws.backbone(plans[0])
    before = {n: p.detach().clone() for n, p in pristine.named_parameters()}
    lora, bitfit, full = (make_model(ws, plan) for plan in plans)
    ptrs = {p.data_ptr() for p in pristine.parameters()}
    assert {p.data_ptr() for p in lora.backbone.parameters() if not p.requires_grad} <= ptrs  # shared, not copied
    assert not any(p.data_ptr() in ptrs for m in (lora, bitfit, full) for p in m.parameters() if p.requires_grad)
    with torch.no_grad():
        for model in (lora, bitfit, full):
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(1.0)  # what an optimizer step does to the trained tensors
    from peftlab.methods.lora import lora_merged

    with lora_merged(lora):
        pass
    assert all(torch.equal(p, before[n]) for n, p in pristine.named_parameters())
