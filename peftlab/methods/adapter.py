"""Bottleneck adapters on the FFN or the attention block, sequential or parallel.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (https://arxiv.org/abs/1902.00751);
He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022 (parallel and scaled
parallel adapters, https://arxiv.org/abs/2110.04366).

``f(z) = up(act(down(LN(z))))`` is the bottleneck (the input LayerNorm only with ``--adapter_layernorm``). A
post-LN block computes ``norm(dropout(out_proj(...)) + x)`` from its input ``x``. The adapter joins it in one of
two ways::

    added (default):         out_proj ──► h ──► h + s · f(h)         (sequential)
                             out_proj ──► h ──► h + s · f(x)         (parallel; x: the block's input)

    --adapter_residual_norm  the adapter has its own residual connection, dropout and LayerNorm LN_a, as the
                             paper's code has it (PKU-TANGENT/Efficiency models/adapter.py, Adapter.forward;
                             models/modeling_adapter_roberta.py, AdapterRobertaLayer):
                             y = norm(...)  ──► LN_a(y + dropout(s · f(y)))                   (sequential: after
                                                                                               the block's norm)
                             norm(dropout(out_proj(...)) + LN_a(x + dropout(s · f(x))))       (parallel: the
                                                                                               block's residual)

In a pre-norm block (Llama, GPT-2: ``x + out_proj(...(norm(x)))``) the added adapter sits the same way, on the
output projection before the residual sum; the parallel one reads the input of the block's first linear layer
(query, GPT-2's fused qkv, or the FFN's up-projection), i.e. the block's normed input. ``--adapter_residual_norm``
needs a norm closing the block and is refused on pre-norm architectures.

With ``--adapter_init zero`` (default) the up-projection starts at zero, so a fresh added adapter is the identity
and the model computes what the base model does; ``model`` initialises both projections as the
backbone initialises its linear layers, N(0, initializer_range) with zero biases: what the paper's code ends up
with whatever its ``identity_init`` says (transformers re-initialises the new modules; docs/paper_protocol.md).

``--adapter_sparsity s`` prunes the adapter at initialisation (SparseAdapter: He, Chen, Zhang and Liu, Findings of
EMNLP 2022, https://arxiv.org/abs/2210.04284): in each projection's weight the share ``s`` of entries is held at
zero for the whole run (the forward multiplies by a fixed mask), so a wider bottleneck trains the parameter count
of a narrower one; the run's parameter counts leave the pruned entries out. Which entries go
(``--adapter_prune``), per projection: ``random`` (the run's seed), ``magnitude`` (the smallest ``|w|`` of the
initialisation) or ``snip`` (SNIP, Lee et al. 2019: the smallest ``|w * dL/dw|`` summed over
``--adapter_prune_batches`` training batches, in eval mode, chosen before the first step through
:meth:`~peftlab.methods.Method.prepare`, as the sparse method's data masks are). The kept entries are recorded
(``extra_state``) and a reload takes them from there.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.architectures import Architecture, linear_shape
from peftlab.errors import ConfigError
from peftlab.methods.base import (
    ACTIVATIONS,
    Method,
    TunerLayer,
    batch_loss,
    check_choices,
    check_positive,
    pack_indices,
    register,
    unpack_indices,
)

# Where the block's input can be read (the input of its first linear layer: the first of these roles the
# architecture has), and where it ends.
_INPUT_ROLES = {"ffn": ("ffn_in",), "attn": ("query", "qkv")}
_OUTPUT_ROLE = {"ffn": "ffn_out", "attn": "attn_out"}
_NORM_ROLE = {"ffn": "ffn_norm", "attn": "attn_norm"}


@dataclass
class AdapterOptions:
    """Options of ``--method adapter``."""

    placement: str = field(default="ffn", metadata={"help": "Adapter placement: ffn or attn."})
    adapter_form: str = field(
        default="sequential",
        metadata={"help": "sequential (after the block's output projection) or parallel (beside the block)."},
    )
    bottleneck_dim: int = field(default=64, metadata={"help": "Adapter bottleneck, 1 up to the FFN width."})
    adapter_activation: str = field(default="relu", metadata={"help": "Adapter activation: relu, gelu, tanh, silu."})
    adapter_layernorm: bool = field(default=False, metadata={"help": "LayerNorm on the adapter's input."})
    adapter_layernorm_affine: bool = field(
        default=True, metadata={"help": "Whether that LayerNorm has an elementwise affine (weight and bias)."}
    )
    adapter_init: str = field(
        default="zero",
        metadata={
            "help": "zero: up-projection zero, so a new adapter is the identity; normal: N(0, 0.02) up-projection; "
            "model: both projections as the backbone initialises its own linear layers, N(0, initializer_range) weights and "
            "zero biases (what the paper's code ends up with: docs/paper_protocol.md section 5)."
        },
    )
    adapter_residual_norm: bool = field(
        default=False,
        metadata={
            "help": "Give the adapter its own residual connection, dropout and LayerNorm, as the paper's code does: "
            "sequential, after the block's LayerNorm; parallel, in place of the block's residual input "
            "(post-norm blocks only)."
        },
    )
    adapter_scaling: float = field(
        default=1.0, metadata={"help": "Adapter output scale s (He et al.'s scaled parallel adapter uses 4)."}
    )
    adapter_sparsity: float = field(
        default=0.0,
        metadata={
            "help": "Share of each projection's weight entries pruned at initialisation and held at zero "
            "(SparseAdapter), in [0, 1); 0: no pruning."
        },
    )
    adapter_prune: str = field(
        default="snip",
        metadata={
            "help": "--adapter_sparsity: which entries go, per projection: snip (smallest |w * dL/dw| over "
            "--adapter_prune_batches training batches), magnitude (smallest |w|) or random (the run's seed)."
        },
    )
    adapter_prune_batches: int = field(
        default=8, metadata={"help": "--adapter_prune snip: the number of training batches its scores sum over."}
    )

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "placement": ("ffn", "attn"),
                "adapter_form": ("sequential", "parallel"),
                "adapter_activation": tuple(ACTIVATIONS),
                "adapter_init": ("zero", "normal", "model"),
                "adapter_prune": PRUNINGS,
            },
        )
        check_positive(self, "bottleneck_dim", "adapter_prune_batches")
        if not 0 <= self.adapter_sparsity < 1 or math.isnan(self.adapter_sparsity):
            raise ConfigError(
                f"--adapter_sparsity {self.adapter_sparsity:g} is not valid: give the share of entries pruned, "
                "in [0, 1)."
            )
        if self.adapter_sparsity and self.adapter_prune != "random" and self.adapter_init == "zero":
            raise ConfigError(
                f"--adapter_prune {self.adapter_prune} scores entries by their initial weights, and --adapter_init "
                "zero starts the up-projection at zero (every score there is 0): use --adapter_init model or "
                "normal, or --adapter_prune random."
            )


PRUNINGS = ("snip", "magnitude", "random")


def kept_count(numel: int, sparsity: float) -> int:
    """The entries of a matrix of ``numel`` that stay at ``--adapter_sparsity`` (at least one)."""
    return max(1, numel - round(sparsity * numel))


class Bottleneck(nn.Module):
    """``up(act(down(LN(x))))`` with ``down``: d -> r and ``up``: r -> d."""

    def __init__(self, dim: int, args: AdapterOptions, init_std: float = 0.02) -> None:
        super().__init__()
        affine = args.adapter_layernorm_affine
        self.norm = nn.LayerNorm(dim, elementwise_affine=affine) if args.adapter_layernorm else nn.Identity()
        self.down = nn.Linear(dim, args.bottleneck_dim)
        self.act = ACTIVATIONS[args.adapter_activation]()
        self.up = nn.Linear(args.bottleneck_dim, dim)
        if args.adapter_init == "zero":
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        elif args.adapter_init == "normal":
            nn.init.normal_(self.up.weight, std=0.02)
            nn.init.zeros_(self.up.bias)
        else:  # "model": as the backbone initialises its linear layers
            for linear in (self.down, self.up):
                nn.init.normal_(linear.weight, std=init_std)
                nn.init.zeros_(linear.bias)

        self.masked = args.adapter_sparsity > 0
        if self.masked:  # every entry kept until a mask is chosen (set_masks)
            self.register_buffer("down_mask", torch.ones_like(self.down.weight, dtype=torch.bool), persistent=False)
            self.register_buffer("up_mask", torch.ones_like(self.up.weight, dtype=torch.bool), persistent=False)

    def projections(self) -> dict[str, nn.Linear]:
        return {"down": self.down, "up": self.up}

    @torch.no_grad()
    def set_masks(self, kept: dict[str, torch.Tensor]) -> None:
        """Keep these flat entries of each projection's weight (``down``, ``up``); the others are zeroed and stay
        zero."""
        for name, linear in self.projections().items():
            mask = torch.zeros(linear.weight.numel(), dtype=torch.bool, device=linear.weight.device)
            mask[kept[name].to(mask.device)] = True
            setattr(self, f"{name}_mask", mask.view_as(linear.weight))
            linear.weight.mul_(mask.view_as(linear.weight))

    def project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        linear = self.projections()[name]
        if not self.masked:
            return linear(x)
        return F.linear(x, linear.weight * getattr(self, f"{name}_mask"), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project("up", self.act(self.project("down", self.norm(x))))


class BlockInput:
    """Remembers the input of a block (read by a pre-hook on its first linear layer) for a parallel adapter."""

    def __init__(self, input_module: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        # read x before any LoRA wrapper too
        getattr(input_module, "base_layer", input_module).register_forward_pre_hook(self._remember)

    def _remember(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("parallel adapter: the block's input was not seen in this forward pass")
        return value


class AdapterLayer(TunerLayer):
    """Wraps a block's output projection; adds the adapter's output to it."""

    def __init__(
        self, base_layer: nn.Module, dim: int, args: AdapterOptions, block_input: BlockInput | None, init_std: float
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Bottleneck(dim, args, init_std)
        self.scaling = args.adapter_scaling
        self.block_input = block_input

    @property
    def parallel(self) -> bool:
        return self.block_input is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        source = out if self.block_input is None else self.block_input.take()
        return out + self.scaling * self.adapter(source)


class ResidualNormAdapterLayer(TunerLayer):
    """Wraps a block's closing LayerNorm; the adapter has its own residual connection, dropout and LayerNorm."""

    def __init__(
        self,
        base_layer: nn.LayerNorm,
        dim: int,
        args: AdapterOptions,
        block_input: BlockInput | None,
        init_std: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Bottleneck(dim, args, init_std)
        self.scaling = args.adapter_scaling
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=base_layer.eps, elementwise_affine=args.adapter_layernorm_affine)
        self.block_input = block_input

    @property
    def parallel(self) -> bool:
        return self.block_input is not None

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """``LN_a(z + dropout(s · f(z)))``."""
        return self.norm(z + self.dropout(self.scaling * self.adapter(z)))

    def forward(self, summed: torch.Tensor) -> torch.Tensor:
        if self.block_input is None:
            return self.transform(self.base_layer(summed))
        x = self.block_input.take()  # summed = dropout(out_proj(...)) + x: swap x for the adapter's output
        return self.base_layer(summed - x + self.transform(x))


@register
class Adapter(Method):
    """Adapters (Houlsby et al. 2019; He et al. 2022's parallel form): a bottleneck beside or after the FFN or attention block."""

    name = "adapter"
    options_class = AdapterOptions
    paper_learning_rate = 2e-3  # adapter_hyper.sh:30,47,60,61
    paper_options = MappingProxyType({
        "bottleneck_dim": 2,  # adapter_hyper.sh:15,62
        "adapter_activation": "tanh",  # models/adapter.py:7-18
        "adapter_init": "model",  # N(0, 0.02) whatever identity_init says: docs/paper_protocol.md section 5
        "adapter_residual_norm": True,  # its own residual, dropout and LayerNorm: models/adapter.py:7-18
        "adapter_layernorm_affine": True,  # adapter_hyper.sh:68; adapter_arguments.py:198-199
        "adapter_scaling": 1.0,  # models/adapter.py:7-18 (no scale)
        "adapter_layernorm": False,  # no LayerNorm on the adapter's input: models/adapter.py:7-18
    })  # fmt: skip

    def input_role(self, arch: Architecture) -> str:
        return next(
            (r for r in _INPUT_ROLES[self.options.placement] if arch.has(r)), _INPUT_ROLES[self.options.placement][0]
        )

    def wrapped_role(self) -> str:
        """The role whose module the adapter wraps: the block's output projection, or its closing norm."""
        placement = self.options.placement
        return _NORM_ROLE[placement] if self.options.adapter_residual_norm else _OUTPUT_ROLE[placement]

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        options = self.options
        roles = (self.wrapped_role(), "ffn_in") + (
            (self.input_role(arch),) if options.adapter_form == "parallel" else ()
        )
        self.resolve(backbone, arch, tuple(dict.fromkeys(roles)), "placement")
        width = linear_shape(self.module(backbone, arch, self.layers[0], "ffn_in"))[1]
        if not 1 <= options.bottleneck_dim <= width:
            raise ConfigError(f"--bottleneck_dim {options.bottleneck_dim} must be between 1 and the FFN width {width}.")
        if options.adapter_residual_norm:
            role = _NORM_ROLE[options.placement]
            if arch.norm_position != "post":
                raise ConfigError(
                    f"adapter: --adapter_residual_norm needs a norm closing the {options.placement} block (post-norm, "
                    f"as BERT's); {backbone.config.model_type} is pre-norm: its {role} opens the block (layers "
                    f"{self.layers})."
                )
            norm = self.module(backbone, arch, self.layers[0], role)
            if not isinstance(norm, nn.LayerNorm):
                raise ConfigError(
                    f"--adapter_residual_norm needs a LayerNorm closing the {options.placement} block; "
                    f"{backbone.config.model_type} has {type(norm).__name__} there."
                )

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        options = self.options
        dim = backbone.config.hidden_size
        dropout = getattr(backbone.config, "hidden_dropout_prob", 0.1)
        init_std = getattr(backbone.config, "initializer_range", 0.02)
        self._by_path: dict[str, Bottleneck] = {}
        """The adapters' bottlenecks by the path (from the backbone) of the layer each wraps."""
        for layer in self.layers:
            block_input = None
            if options.adapter_form == "parallel":
                block_input = BlockInput(self.module(backbone, arch, layer, self.input_role(arch)))
            path = self.path(arch, layer, self.wrapped_role())
            base = backbone.get_submodule(path)
            if options.adapter_residual_norm:
                new = ResidualNormAdapterLayer(base, dim, options, block_input, init_std, dropout)
            else:
                new = AdapterLayer(base, dim, options, block_input, init_std)
            self.replace(backbone, path, new)
            self._by_path[path] = new.adapter
        self.pruned_state: dict[str, Any] = {}
        """How the pruned adapter's entries were chosen and which stay (:meth:`extra_state`); empty until chosen."""
        if options.adapter_sparsity and options.adapter_prune != "snip" and not self.layers_on_meta():
            self.prune({path: {n: lin.weight.abs() for n, lin in b.projections().items()} for path, b in self._by_path.items()})  # fmt: skip
        return []

    def layers_on_meta(self) -> bool:
        return any(lin.weight.is_meta for b in self._by_path.values() for lin in b.projections().values())

    def held_at_zero(self) -> int:
        """The pruned weight entries (``--adapter_sparsity``): parameters that never train."""
        if not self.options.adapter_sparsity:
            return 0
        return sum(
            linear.weight.numel() - kept_count(linear.weight.numel(), self.options.adapter_sparsity)
            for bottleneck in self._by_path.values()
            for linear in bottleneck.projections().values()
        )

    def prune(self, scores: dict[str, dict[str, torch.Tensor]], **how: Any) -> None:
        """Keep, per projection, the largest ``scores`` (``random``: a random choice); record what was kept."""
        options, kept_all = self.options, {}
        generator = torch.Generator().manual_seed(torch.initial_seed())
        for path, by_projection in scores.items():
            kept = {}
            for name, score in by_projection.items():
                count = kept_count(score.numel(), options.adapter_sparsity)
                if options.adapter_prune == "random":
                    kept[name] = torch.randperm(score.numel(), generator=generator)[:count].sort().values
                else:
                    kept[name] = score.reshape(-1).float().topk(count).indices.sort().values
            self._by_path[path].set_masks(kept)
            kept_all[path] = {name: pack_indices(k) for name, k in kept.items()}
        self.pruned_state = {"prune": options.adapter_prune, "sparsity": options.adapter_sparsity, **how,
                             "kept": kept_all}  # fmt: skip
        if options.adapter_prune == "random":
            self.pruned_state["seed"] = torch.initial_seed()

    def prepare(self, model: nn.Module, batches) -> None:
        """SNIP: the entries' scores ``|w * dL/dw|`` over the first ``--adapter_prune_batches`` training batches."""
        if not self.options.adapter_sparsity or self.options.adapter_prune != "snip" or self.pruned_state:
            return
        linears = {(path, n): lin for path, b in self._by_path.items() for n, lin in b.projections().items()}
        for linear in linears.values():
            linear.weight.requires_grad_(True)
        scores = {key: torch.zeros_like(linear.weight, dtype=torch.float32) for key, linear in linears.items()}
        device, was_training, used = next(model.parameters()).device, model.training, 0
        try:
            model.eval()
            for batch in itertools.islice(batches(), self.options.adapter_prune_batches):
                loss = batch_loss(model, batch, device, "--adapter_prune snip")
                grads = torch.autograd.grad(loss, [linear.weight for linear in linears.values()])
                for key, grad in zip(linears, grads, strict=True):
                    scores[key] += (grad.float() * linears[key].weight.detach().float()).abs()
                used += 1
        finally:
            model.train(was_training)
        if used == 0:
            raise ConfigError("--adapter_prune snip: no training batch was given to choose the mask from.")
        by_path: dict[str, dict[str, torch.Tensor]] = {}
        for (path, name), score in scores.items():
            by_path.setdefault(path, {})[name] = score
        self.prune(by_path, prune_batches=used)

    def extra_state(self) -> dict[str, Any]:
        """The pruned adapter's kept entries (packed int32 flat indices, by wrapped layer and projection) and how
        they were chosen; nothing without ``--adapter_sparsity``."""
        return dict(self.pruned_state)

    def load_extra_state(self, backbone: nn.Module, state: dict[str, Any]) -> None:
        """Take the saved run's kept entries (before its weights are loaded)."""
        if not state:
            return
        kept = state.get("kept")
        if state.get("sparsity") != self.options.adapter_sparsity or not isinstance(kept, dict) or set(kept) != set(self._by_path):  # fmt: skip
            raise ConfigError(
                f"adapter: the saved run records pruning {state.get('sparsity')!r} of {sorted(kept or {})}, but its "
                f"options say --adapter_sparsity {self.options.adapter_sparsity:g} on {sorted(self._by_path)}."
            )
        for path, by_projection in kept.items():
            bottleneck = self._by_path[path]
            masks = {name: unpack_indices(text) for name, text in by_projection.items()}
            for name, linear in bottleneck.projections().items():
                if name not in masks or masks[name].numel() != kept_count(linear.weight.numel(), self.options.adapter_sparsity):  # fmt: skip
                    raise ConfigError(f"adapter: the saved mask of {path} ({name}) does not fit its weight.")
            bottleneck.set_masks(masks)
        self.pruned_state = dict(state)
