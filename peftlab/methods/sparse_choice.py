"""How the sparse method's data masks are chosen, inside a run before its first step (the method's
:meth:`~peftlab.methods.Method.prepare`) or from Python after building the model and before its optimizer:
``fisher`` from squared gradients at initialisation, ``lt-sft`` from a dense phase that is then rewound. Both see
every entry of the targeted matrices at once through a dense probe (``W + probe``, the probe at zero), and both
keep the budget's largest scores over all the matrices together."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from peftlab.errors import ConfigError
from peftlab.methods.base import batch_loss
from peftlab.methods.sparse import SparseFineTune, SparseLinear, global_top, sparse_method


@contextmanager
def dense_probes(model: nn.Module, modules: Mapping[str, SparseLinear], training: bool) -> Iterator[list[torch.Tensor]]:
    """Within the block each sparse layer runs with ``W + probe``, a dense float32 delta at zero with a gradient
    (every entry at once), the model in train or eval mode; the probes go and the mode is restored after."""
    was_training = model.training
    try:
        model.train(training)
        probes = []
        for module in modules.values():
            weight = module.linear.weight
            module._probe = torch.zeros(weight.shape, device=weight.device, requires_grad=True)
            probes.append(module._probe)
        yield probes
    finally:
        for module in modules.values():
            module._probe = None
        model.train(was_training)


def fisher_scores(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], int]:
    """The squared gradient of the loss with respect to every entry of each sparse layer's weight, summed over
    the first ``--sparse_fisher_batches`` batches (dicts of the model's inputs, with ``labels``), at a zero delta
    and in eval mode; and how many batches were used. Nothing is trained and no ``.grad`` is left behind."""
    method = sparse_method(model)
    modules = method.sparse_modules
    device = next(model.parameters()).device
    scores = {path: torch.zeros(m.linear.weight.shape, device=device) for path, m in modules.items()}
    used = 0
    with dense_probes(model, modules, training=False) as probes:
        for batch in itertools.islice(batches, method.options.sparse_fisher_batches):
            grads = torch.autograd.grad(batch_loss(model, batch, device, "--sparse_mask fisher"), probes)
            for path, grad in zip(modules, grads, strict=True):
                scores[path] += grad.float().square()
            used += 1
    return scores, used


def choose_fisher_mask(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, int]:
    """Choose the FISH mask of a model built with ``--sparse_mask fisher``: the ``--sparse_budget`` entries with the
    largest summed squared gradients (:func:`fisher_scores`), over every targeted matrix together. Call it after
    building the model and before building its optimizer (the values are created again, at zero). Returns the
    number of entries chosen in each layer."""
    method = sparse_method(model)
    if method.options.sparse_mask != "fisher":
        raise ConfigError(f"choose_fisher_mask: the model was built with --sparse_mask {method.options.sparse_mask}.")
    scores, used = fisher_scores(model, batches)
    if used == 0:
        raise ConfigError("--sparse_mask fisher: no training batch was given to choose the mask from.")
    return set_chosen(method, list(scores.values()), fisher_batches=used)


def set_chosen(method: SparseFineTune, scores: list[torch.Tensor], **how: Any) -> dict[str, int]:
    """Train the method's budget of entries with the largest ``scores`` (one per sparse layer, chosen globally),
    record how they were chosen, and return the number chosen in each layer."""
    chosen_by_layer = global_top(scores, method.chosen["budget"])
    for module, chosen in zip(method.sparse_modules.values(), chosen_by_layer, strict=True):
        module.set_indices(chosen)
        module.pending = False
    method.chosen = {
        "mask": method.options.sparse_mask,
        "budget": method.chosen["budget"],
        "targeted_entries": method.chosen["targeted_entries"],
        "allocation": "global",
        **how,
    }
    return {path: m.sparse_indices.numel() for path, m in method.sparse_modules.items()}


def choose_lottery_mask(
    model: nn.Module, batches: Callable[[], Iterable[Mapping[str, torch.Tensor]]]
) -> dict[str, int]:
    """Choose the LT-SFT mask of a model built with ``--sparse_mask lt-sft``: train every entry of the targeted
    matrices and the head densely for ``--sparse_lt_epochs`` passes over ``batches()`` (called once per pass; a
    fraction ends part-way), keep the ``--sparse_budget`` entries that moved most, and rewind the head, the random
    state and the entries. Call it after building the model and before building its optimizer. Returns the number
    of entries chosen in each layer."""
    method = sparse_method(model)
    options = method.options
    if options.sparse_mask != "lt-sft":
        raise ConfigError(f"choose_lottery_mask: the model was built with --sparse_mask {options.sparse_mask}.")
    device = next(model.parameters()).device
    trained = [p for p in model.parameters() if p.requires_grad and not any(p is m.sparse_values for m in method.sparse_modules.values())]  # fmt: skip
    initial = [p.detach().clone() for p in trained]
    steps, per_epoch = 0, None
    with torch.random.fork_rng(devices=[]), dense_probes(model, method.sparse_modules, training=True) as probes:
        optimizer = torch.optim.AdamW([*probes, *trained], lr=options.sparse_lt_learning_rate, weight_decay=0.0)
        total = None
        while total is None or steps < total:
            loader = batches()
            if total is None:
                per_epoch = len(loader)
                total = max(1, math.ceil(options.sparse_lt_epochs * per_epoch))
            before = steps
            for batch in itertools.islice(loader, total - steps):
                optimizer.zero_grad(set_to_none=True)
                batch_loss(model, batch, device, "--sparse_mask lt-sft").backward()
                optimizer.step()
                steps += 1
            if steps == before:
                raise ConfigError("--sparse_mask lt-sft: no training batch was given to choose the mask from.")
        moved = [probe.detach().abs() for probe in probes]
    with torch.no_grad():
        for parameter, value in zip(trained, initial, strict=True):
            parameter.copy_(value)
            parameter.grad = None
    return set_chosen(method, moved, lt_steps=steps, lt_epochs=round(steps / per_epoch, 4),
                      lt_learning_rate=options.sparse_lt_learning_rate)  # fmt: skip
