"""Sparse fine-tuning: a trained delta on a fixed set of individual weight entries, everything else frozen.

The line of work of diff pruning (Guo, Rush and Kim, ACL 2021, https://arxiv.org/abs/2012.07463), FISH masks
(Sung, Nair and Raffel, "Training Neural Networks with Fixed Sparse Masks", NeurIPS 2021,
https://arxiv.org/abs/2111.09839) and LT-SFT (Ansell, Ponti, Korhonen and Vulić, "Composable Sparse Fine-Tuning
for Cross-Lingual Transfer", ACL 2022, https://arxiv.org/abs/2110.07560), here at a budget matched to the other
methods' (``--sparse_budget 2690``: the paper's adapter at one layer of the bundled MiniLM)::

    x ──► base_layer with W + scatter(indices, values) ──► y        (indices: a buffer; values: trained)

Each wrapped linear layer holds ONLY the selected entries: a flat index buffer into its weight (row-major, in the
weight's own layout: ``out x in``, or ``in x out`` for GPT-2's ``Conv1D``) and a trained float32 vector of the
same length, zero at the start (a fresh model computes what the base model does). Each forward builds
``W + scatter(values)`` as a new tensor (the frozen weight, which runs of one process share, is never written)
and runs the wrapped layer with it. The weight's gradient is dense, as for ``ffn`` (one matrix product), but
only the selected entries are gathered from it and the optimizer holds only them. The update is added in the
weight's dtype: with half-precision weights (``--model_dtype bfloat16``) it is rounded to the weight's precision,
as LoRA's merge is.

Which entries (``--sparse_mask``), at the start, once:

- ``magnitude``: the largest ``|W|`` over every targeted matrix together (chosen globally, not per matrix);
- ``random``: uniformly at random within each matrix, the budget split over the matrices in proportion to their
  sizes; drawn from a generator seeded with the run's seed (``torch.initial_seed()``, which ``set_seed`` sets);
- ``fisher`` (FISH): the largest squared gradients of the loss with respect to each weight entry, summed over
  ``--sparse_fisher_batches`` training batches, with the model (and its freshly initialised head) as the run will
  train it, in eval mode (no dropout), chosen globally. A run chooses it before training through the
  :meth:`~peftlab.methods.Method.prepare` hook, over the training set in a fixed order; from Python, call
  :func:`~peftlab.methods.sparse_choice.choose_fisher_mask` after building the model and before building the optimizer. A model whose fisher
  mask was never chosen refuses to run, saying so.
- ``lt-sft`` (LT-SFT's lottery ticket): a short dense phase first, ``--sparse_lt_epochs`` over the training set
  (in the same fixed order) with AdamW at ``--sparse_lt_learning_rate``, training every entry of the targeted
  matrices and the head, with dropout; the ``--sparse_budget`` entries that moved most (largest ``|W_dense - W|``,
  globally) are kept, and everything is rewound (the head to its initialisation, the entries to their pretrained
  values, the random state to where it was) before the run trains only them. The dense phase runs inside the run,
  before its first step (:meth:`~peftlab.methods.Method.prepare`, as fisher's), so its time is part of the run's
  ``cpu_seconds`` and ``wall_seconds``, and ``prepare_seconds`` in its results says how much; from Python,
  :func:`~peftlab.methods.sparse_choice.choose_lottery_mask`.

The mask is part of what a saved run records (its ``extra_state`` in ``peftlab_model.json``): how it was chosen
(mask, budget, seed or batches) and the indices themselves, packed; the values are the run's trained
parameters. A reload takes the recorded indices, so it computes exactly what was saved whatever the mask.
Weight decay applies to the values, pulling each entry back toward its pretrained value (diff pruning's L2 on
the delta). For evaluation the delta is merged into the weight (``merged_for_eval``) and the original weight
tensor put back after, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from peftlab.architectures import LINEAR_ROLES, Architecture
from peftlab.errors import ConfigError
from peftlab.methods.base import (
    Method,
    TunerLayer,
    check_choices,
    check_positive,
    innermost_linear,
    pack_indices,
    parse_roles,
    register,
    unpack_indices,
)

SPARSE_MASKS = ("magnitude", "random", "fisher", "lt-sft")
DATA_MASKS = {"fisher": "choose_fisher_mask", "lt-sft": "choose_lottery_mask"}
"""The masks chosen from training data before the first step, and the function that chooses each from Python."""


def pending_message(mask: str) -> str:
    return (
        f"--sparse_mask {mask}: the mask is chosen from training batches before training, and it has not been "
        "chosen for this model (a training run chooses it before its first step): from Python, call "
        f"peftlab.methods.sparse_choice.{DATA_MASKS[mask]}(model, batches) after building the model and before the "
        "optimizer."
    )


@dataclass
class SparseOptions:
    """Options of ``--method sparse``."""

    sparse_budget: float = field(
        default=2690,
        metadata={
            "help": "How many weight entries train: a count (e.g. 2690, the paper adapter's parameter count at one "
            "layer of the bundled MiniLM) or a fraction in (0, 1) of the entries of the targeted matrices."
        },
    )
    sparse_mask: str = field(
        default="magnitude",
        metadata={
            "help": "Which entries: magnitude (largest |W| over all targeted matrices), random (uniform within each "
            "matrix, the budget split by matrix size; seeded by the run's seed), fisher (largest squared "
            "gradients over --sparse_fisher_batches training batches, chosen before training) or lt-sft (the "
            "entries that moved most in a dense phase of --sparse_lt_epochs, then rewound)."
        },
    )
    sparse_targets: str = field(
        default="ffn_in,ffn_out",
        metadata={
            "help": f"Comma-separated linear roles whose weight entries sparse trains ('all': every one the "
            f"architecture has): {', '.join(LINEAR_ROLES)}."
        },
    )
    sparse_fisher_batches: int = field(
        default=8, metadata={"help": "--sparse_mask fisher: the number of training batches its gradients sum over."}
    )
    sparse_lt_epochs: float = field(
        default=1.0,
        metadata={"help": "--sparse_mask lt-sft: the dense phase's length in epochs of the training set (> 0)."},
    )
    sparse_lt_learning_rate: float = field(
        default=2e-4,
        metadata={
            "help": "--sparse_mask lt-sft: the dense phase's AdamW learning rate (default: the paper's rate for "
            "fine-tuning one layer's FFN, --method ffn)."
        },
    )

    def __post_init__(self) -> None:
        check_choices(self, {"sparse_mask": SPARSE_MASKS})
        check_positive(self, "sparse_fisher_batches")
        for name in ("sparse_lt_epochs", "sparse_lt_learning_rate"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"--{name} must be a number > 0, got {value:g}.")
        budget = self.sparse_budget
        if not math.isfinite(budget) or budget <= 0 or (budget >= 1 and not float(budget).is_integer()):
            raise ConfigError(
                f"--sparse_budget {budget:g} is not valid: give a count of entries (an integer >= 1) or a fraction "
                "in (0, 1) of the targeted entries."
            )
        parse_roles(self.sparse_targets, "sparse_targets", LINEAR_ROLES)


def budget_count(budget: float, total: int) -> int:
    """The number of entries a ``--sparse_budget`` means for ``total`` targeted entries."""
    return int(budget) if budget >= 1 else round(budget * total)


def proportional_split(count: int, sizes: list[int]) -> list[int]:
    """``count`` split over matrices of ``sizes`` entries in proportion to them (largest remainders)."""
    total = sum(sizes)
    exact = [count * size / total for size in sizes]
    parts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (parts[i] - exact[i], i))
    for i in by_remainder[: count - sum(parts)]:
        parts[i] += 1
    return parts


def global_top(scores: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Flat indices, per matrix (sorted), of the ``count`` largest scores over all the matrices together. Each
    matrix's own top ``count`` are the only candidates, so no concatenation of every score is made."""
    values, owners, local = [], [], []
    for index, score in enumerate(scores):
        flat = score.detach().reshape(-1).float()
        top = flat.topk(min(count, flat.numel()))
        values.append(top.values)
        local.append(top.indices)
        owners.append(torch.full_like(top.indices, index))
    chosen = torch.cat(values).topk(count).indices
    owner, position = torch.cat(owners)[chosen], torch.cat(local)[chosen]
    return [position[owner == index].sort().values for index in range(len(scores))]


class SparseLinear(TunerLayer):
    """``base_layer`` (a linear layer, or another method's wrapper around one) run with its innermost weight
    replaced by ``W + scatter(sparse_indices, sparse_values)``."""

    def __init__(self, base_layer: nn.Module, indices: torch.Tensor) -> None:
        super().__init__()
        self.base_layer = base_layer
        key, module = "weight", base_layer
        while isinstance(getattr(module, "base_layer", None), nn.Module):
            key, module = f"base_layer.{key}", module.base_layer
        self._weight_key = key
        """The innermost weight's name inside ``base_layer`` (``weight``; ``base_layer.weight`` around LoRA's)."""
        weight = self.linear.weight
        self.register_buffer("sparse_indices", torch.zeros(0, dtype=torch.long, device=weight.device), persistent=False)
        self.sparse_values = nn.Parameter(torch.zeros(0, device=weight.device))
        self.set_indices(indices)
        self.pending: str | bool = False
        """The mask (``fisher``, ``lt-sft``) while it has not been chosen: the module then refuses to run."""
        self._probe: torch.Tensor | None = None
        self._unmerged_weight: torch.Tensor | None = None

    @property
    def linear(self) -> nn.Module:
        """The innermost linear layer, whose weight the entries belong to."""
        return innermost_linear(self.base_layer)

    @property
    def bias(self) -> torch.Tensor | None:
        """The innermost layer's (frozen) bias, for methods applied after this one that look for it (BitFit)."""
        return getattr(self.linear, "bias", None)

    @property
    def merged(self) -> bool:
        return self._unmerged_weight is not None

    def set_indices(self, indices: torch.Tensor) -> None:
        """Train these flat entries of the weight (sorted, unique); the values start again at zero."""
        weight = self.linear.weight
        self.sparse_indices = indices.to(device=weight.device, dtype=torch.long)
        self.sparse_values = nn.Parameter(torch.zeros(len(indices), device=weight.device))

    def sparse_weight(self) -> torch.Tensor:
        """``W + scatter(values)``: a new tensor in the weight's layout and dtype."""
        weight = self.linear.weight
        delta = self.sparse_values.to(weight.dtype)
        return weight.reshape(-1).index_add(0, self.sparse_indices, delta).view_as(weight)

    def delta_weight(self) -> torch.Tensor:
        """The update as a dense matrix in the weight's layout (zero outside the selected entries)."""
        weight = self.linear.weight
        flat = torch.zeros(weight.numel(), dtype=self.sparse_values.dtype, device=weight.device)
        return flat.index_add(0, self.sparse_indices, self.sparse_values).view_as(weight)

    @torch.no_grad()
    def merge(self) -> None:
        """Put ``W + scatter(values)`` in place of the weight (idempotent): a new tensor, so the original (shared
        with other models of the process) is never written; kept for :meth:`unmerge`."""
        if self.pending:
            raise ConfigError(pending_message(self.pending))
        if not self.merged:
            weight = self.linear.weight
            merged = self.sparse_weight()
            self._unmerged_weight = weight.data
            weight.data = merged

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original weight tensor back, bit for bit."""
        if self.merged:
            self.linear.weight.data = self._unmerged_weight
            self._unmerged_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        if self._probe is not None:  # a dense delta on every entry: fisher's gradients, lt-sft's dense phase
            weight = self.linear.weight + self._probe
        elif self.pending:
            raise ConfigError(pending_message(self.pending))
        else:
            weight = self.sparse_weight()
        return functional_call(self.base_layer, {self._weight_key: weight}, (x,))


@register
class SparseFineTune(Method):
    """Sparse fine-tuning (diff pruning, FISH, LT-SFT): a trained delta on ``--sparse_budget`` chosen weight
    entries of the chosen roles."""

    name = "sparse"
    options_class = SparseOptions
    order = 3  # wraps whatever LoRA (0), VeRA (1) and (IA)^3 (2) left there; its entries are the innermost weight's
    # Ours: the paper has no sparse fine-tuning. Untuned: the rate the paper gives its adapters (a method of a
    # few thousand parameters at one layer, as this one at its default budget).
    paper_learning_rate = 2e-3
    paper_ours = ("learning_rate",)

    def __init__(self, options: Any, layers: list[int]) -> None:
        super().__init__(options, layers)
        self.sparse_modules: dict[str, SparseLinear] = {}
        """The wrapped layers by path (from the backbone), once :meth:`apply` has wrapped them."""
        self.chosen: dict[str, Any] = {}
        """How the mask was chosen (recorded in :meth:`extra_state`)."""

    def targets(self, backbone: nn.Module, arch: Architecture) -> list[tuple[int, str]]:
        explicit = self.options.sparse_targets.strip() != "all"
        roles = parse_roles(self.options.sparse_targets, "sparse_targets", LINEAR_ROLES)
        return self.resolve(backbone, arch, roles, "sparse_targets", explicit)

    def count(self, backbone: nn.Module, arch: Architecture) -> int:
        """The number of entries that train; refused (with the numbers) when it is 0 or more than there are."""
        targets = self.targets(backbone, arch)
        total = sum(
            innermost_linear(self.module(backbone, arch, layer, role)).weight.numel() for layer, role in targets
        )
        budget, count = self.options.sparse_budget, budget_count(self.options.sparse_budget, total)
        where = (
            f"the {total} entries of {', '.join(dict.fromkeys(role for _, role in targets))} in layers {self.layers} "
            f"({len(targets)} matrices)"
        )
        if count > total:
            raise ConfigError(f"--sparse_budget {budget:g} is more than {where}: give at most {total}, or a fraction.")
        if count < 1:
            raise ConfigError(f"--sparse_budget {budget:g} of {where} is 0 entries: give a larger fraction or a count.")
        return count

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        for layer, role in self.targets(backbone, arch):
            module = innermost_linear(self.module(backbone, arch, layer, role))
            if not isinstance(module, nn.Linear) and type(module).__name__ != "Conv1D":
                raise ConfigError(
                    f"sparse needs nn.Linear (or Conv1D) at {role} of layer {layer}; found {type(module).__name__}."
                )
        self.count(backbone, arch)

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        o, count = self.options, self.count(backbone, arch)
        paths = [self.path(arch, layer, role) for layer, role in self.targets(backbone, arch)]
        weights = [innermost_linear(backbone.get_submodule(path)).weight for path in paths]
        sizes = [w.numel() for w in weights]
        self.chosen = {"mask": o.sparse_mask, "budget": count, "targeted_entries": sum(sizes)}
        if weights[0].is_meta or o.sparse_mask in DATA_MASKS:  # no values to choose from yet: the first entries
            chosen = [torch.arange(k) for k in proportional_split(count, sizes)]
        elif o.sparse_mask == "magnitude":
            chosen = global_top([w.abs() for w in weights], count)
            self.chosen["allocation"] = "global"
        else:
            seed = torch.initial_seed()
            generator = torch.Generator().manual_seed(seed)
            chosen = [
                torch.randperm(size, generator=generator)[:k].sort().values
                for size, k in zip(sizes, proportional_split(count, sizes), strict=True)
            ]
            self.chosen.update(allocation="proportional", seed=seed)
        for path, indices in zip(paths, chosen, strict=True):
            module = SparseLinear(backbone.get_submodule(path), indices)
            module.pending = o.sparse_mask if o.sparse_mask in DATA_MASKS else False
            self.replace(backbone, path, module)
            self.sparse_modules[path] = module
        return []

    def prepare(self, model: nn.Module, batches) -> None:
        """A fisher mask is chosen here, from the first ``--sparse_fisher_batches`` training batches; an lt-sft mask
        from its dense phase."""
        if not any(m.pending for m in self.sparse_modules.values()):
            return
        from peftlab.methods.sparse_choice import choose_fisher_mask, choose_lottery_mask

        if self.options.sparse_mask == "fisher":
            choose_fisher_mask(model, batches())
        elif self.options.sparse_mask == "lt-sft":
            choose_lottery_mask(model, batches)

    @contextmanager
    def merged_for_eval(self, backbone: nn.Module) -> Iterator[None]:
        """Evaluate with the delta folded into the weights (one plain matrix product per layer)."""
        try:
            for module in self.sparse_modules.values():
                module.merge()
            yield
        finally:
            for module in self.sparse_modules.values():
                module.unmerge()

    def extra_state(self) -> dict[str, Any]:
        """How the mask was chosen and the chosen indices (packed int32, by module path): not in the weights."""
        if not self.sparse_modules:
            return {}
        return {
            **self.chosen,
            "pending": any(m.pending for m in self.sparse_modules.values()),
            "counts": {path: m.sparse_indices.numel() for path, m in self.sparse_modules.items()},
            "indices": {path: pack_indices(m.sparse_indices) for path, m in self.sparse_modules.items()},
        }

    def load_extra_state(self, backbone: nn.Module, state: dict[str, Any]) -> None:
        """Take the saved run's mask (before its values are loaded)."""
        mask = state.get("mask")
        if mask != self.options.sparse_mask or state.get("budget") != self.chosen["budget"]:
            raise ConfigError(
                f"sparse: the saved run records a {mask!r} mask of {state.get('budget')!r} entries, but its options "
                f"say --sparse_mask {self.options.sparse_mask} of {self.chosen['budget']}: the saved config is "
                "inconsistent."
            )
        packed = state.get("indices")
        if not isinstance(packed, Mapping) or set(packed) != set(self.sparse_modules):
            there = sorted(packed) if isinstance(packed, Mapping) else packed
            raise ConfigError(
                f"sparse: the saved run's mask covers {there!r}, but this model's sparse layers are "
                f"{sorted(self.sparse_modules)}."
            )
        indices = {path: unpack_indices(text) for path, text in packed.items()}
        for path, chosen in indices.items():
            size = self.sparse_modules[path].linear.weight.numel()
            if chosen.numel() and (chosen.min() < 0 or chosen.max() >= size or not bool((chosen.diff() > 0).all())):
                raise ConfigError(
                    f"sparse: the saved mask of {path} is not sorted unique indices into its {size} entries."
                )
        total = sum(chosen.numel() for chosen in indices.values())
        if total != self.chosen["budget"]:
            raise ConfigError(f"sparse: the saved mask has {total} entries, its budget {self.chosen['budget']}.")
        for path, chosen in indices.items():
            self.sparse_modules[path].set_indices(chosen)
            self.sparse_modules[path].pending = self.options.sparse_mask if state.get("pending") else False
        self.chosen = {k: v for k, v in state.items() if k not in ("pending", "counts", "indices")}


def sparse_method(model: nn.Module) -> SparseFineTune:
    """The sparse method of a :class:`~peftlab.modeling.SequenceClassifier`."""
    methods = [m for m in model.injection.applied if isinstance(m, SparseFineTune)]
    if not methods:
        raise ConfigError(f"The model has no sparse method (its methods: {model.injection.methods}).")
    return methods[0]
