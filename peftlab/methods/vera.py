"""VeRA: one pair of frozen random low-rank matrices shared by every adapted layer, and trained scaling vectors.

Kopiczko, Blankevoort and Asano, "VeRA: Vector-based Random Matrix Adaptation", ICLR 2024.
https://arxiv.org/abs/2310.11454

::

    x ──► base_layer (frozen W) ─────────────────────────────────┐
    │                                                             (+) ──► y = W x + b ⊙ (B (d ⊙ (A x)))
    └──► A (r × in, frozen) ──► ⊙ d (r) ──► B (out × r, frozen) ──► ⊙ b (out) ─┘

Only ``d`` and ``b`` train (``r + out`` numbers per layer, against LoRA's ``r · (in + out)``). ``A`` and ``B``
are drawn once per model from ``--vera_seed`` (Kaiming-uniform, as the paper and HuggingFace ``peft``: one CPU
generator, ``A`` then ``B``) and shared by every adapted layer; where layers differ in width, ``A`` is ``r x``
the widest input and ``B`` the widest output ``x r``, and each layer uses the top-left block it needs (as peft
slices them). ``b`` starts at zero, so a fresh model computes exactly what the base model does; ``d`` starts at
``--vera_d_init`` (the paper's 0.1).

The frozen matrices are buffers that are never saved: a reload draws them again from the seed. The method's
extra state (``peftlab_model.json``) records the seed and a SHA-256 digest of what was drawn, and a reload that
draws anything else (another torch's random numbers) is refused instead of computing something else.

``--vera_rank`` defaults to 256 (peft's default): the trained count grows by one number per rank and layer only,
so a rank near the hidden width is cheap; 256 stays below the bundled MiniLM's hidden size 384, where the update
``B diag(d) A`` can still reach rank 256. The paper's GLUE runs use 1024 on RoBERTa-base and 256 on
RoBERTa-large, on query and value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.architectures import LINEAR_ROLES, Architecture, linear_shape
from peftlab.errors import ConfigError
from peftlab.methods.base import Method, TunerLayer, check_positive, innermost_linear, parse_roles, register


@dataclass
class VeraOptions:
    """Options of ``--method vera``."""

    vera_rank: int = field(
        default=256,
        metadata={
            "help": "VeRA rank r of the shared frozen A (r x in) and B (out x r); each layer trains r + out numbers "
            "(the paper: 1024 on RoBERTa-base, 256 on large)."
        },
    )
    vera_d_init: float = field(
        default=0.1, metadata={"help": "Initial value of every entry of the scaling vector d (b starts at zero)."}
    )
    vera_seed: int = field(
        default=0, metadata={"help": "Seed of the frozen random A and B (drawn again from it when a run is reloaded)."}
    )
    vera_targets: str = field(
        default="query,value",
        metadata={
            "help": f"Comma-separated linear roles VeRA adapts ('all': every one the architecture has): "
            f"{', '.join(LINEAR_ROLES)} (qkv: GPT-2's fused query/key/value)."
        },
    )

    def __post_init__(self) -> None:
        check_positive(self, "vera_rank")
        if self.vera_d_init == 0:
            raise ConfigError(
                f"--vera_d_init {self.vera_d_init} must be nonzero: with b at zero too, neither d nor b would get a "
                "gradient."
            )
        if self.vera_seed < 0:
            raise ConfigError(f"--vera_seed must be >= 0, got {self.vera_seed}.")
        parse_roles(self.vera_targets, "vera_targets", LINEAR_ROLES)


def draw_projections(rank: int, in_features: int, out_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` (rank x in) then ``B`` (out x rank), Kaiming-uniform (gain sqrt 2, fan-in) from one CPU generator
    seeded with ``seed``: what peft's VeRA draws from ``projection_prng_key``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    a = nn.init.kaiming_uniform_(torch.empty(rank, in_features, device="cpu"), nonlinearity="relu", generator=generator)
    b = nn.init.kaiming_uniform_(
        torch.empty(out_features, rank, device="cpu"), nonlinearity="relu", generator=generator
    )
    return a, b


def digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's values (float32, row-major), to tell whether two draws are the same."""
    return hashlib.sha256(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


class VeraProjections(nn.Module):
    """The frozen ``A`` and ``B`` every VeRA layer of a model shares: buffers (never trained), not saved with the
    weights (``persistent=False``), drawn from the seed instead."""

    def __init__(self, rank: int, in_features: int, out_features: int, seed: int, device: torch.device) -> None:
        super().__init__()
        a, b = draw_projections(rank, in_features, out_features, seed)
        self.register_buffer("vera_A", a.to(device), persistent=False)
        self.register_buffer("vera_B", b.to(device), persistent=False)


class VeraLinear(TunerLayer):
    """``base_layer`` plus ``b ⊙ (B (d ⊙ (A x)))`` with the model's shared ``A`` and ``B``."""

    def __init__(self, base_layer: nn.Module, projections: VeraProjections, rank: int, d_init: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = linear_shape(innermost_linear(base_layer))
        self.vera_projections = projections  # the same module in every layer: registered once per layer, one tensor
        self.vera_d = nn.Parameter(torch.full((rank,), float(d_init)))
        self.vera_b = nn.Parameter(torch.zeros(self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        a = self.vera_projections.vera_A[:, : self.in_features]
        b = self.vera_projections.vera_B[: self.out_features]
        update = self.vera_b * F.linear(self.vera_d * F.linear(x.to(self.vera_d.dtype), a), b)
        return out + update.to(out.dtype)


@register
class Vera(Method):
    """VeRA (Kopiczko et al. 2024): shared frozen random A and B, trained scaling vectors d and b per layer."""

    name = "vera"
    options_class = VeraOptions
    order = 1  # wraps the plain nn.Linear or LoRA's wrapper (LoRA checks for a plain one), before (IA)^3 and adapters
    # Ours: the paper has no VeRA. Untuned: twice the paper's LoRA rate, as VeRA's update starts smaller (d at 0.1,
    # b at 0); the VeRA paper's own GLUE module on RoBERTa-base (rank 1024, query and value, d at 0.1).
    paper_learning_rate = 4e-3
    paper_options = MappingProxyType({"vera_rank": 1024, "vera_targets": "query,value", "vera_d_init": 0.1})
    paper_ours = ("learning_rate", "options")

    def __init__(self, options: Any, layers: list[int]) -> None:
        super().__init__(options, layers)
        self.projections: VeraProjections | None = None
        """The shared frozen matrices, once :meth:`apply` has drawn them."""

    def targets(self, backbone: nn.Module, arch: Architecture) -> list[tuple[int, str]]:
        explicit = self.options.vera_targets.strip() != "all"
        roles = parse_roles(self.options.vera_targets, "vera_targets", LINEAR_ROLES)
        return self.resolve(backbone, arch, roles, "vera_targets", explicit)

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        for layer, role in self.targets(backbone, arch):
            module = innermost_linear(self.module(backbone, arch, layer, role))
            if not isinstance(module, nn.Linear) and type(module).__name__ != "Conv1D":
                raise ConfigError(
                    f"vera needs nn.Linear (or Conv1D) at {role} of layer {layer}; found {type(module).__name__}."
                )

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        o = self.options
        paths = [self.path(arch, layer, role) for layer, role in self.targets(backbone, arch)]
        linears = [innermost_linear(backbone.get_submodule(path)) for path in paths]
        shapes = [linear_shape(linear) for linear in linears]
        widest_in, widest_out = max(s[0] for s in shapes), max(s[1] for s in shapes)
        device = linears[0].weight.device
        self.projections = VeraProjections(o.vera_rank, widest_in, widest_out, o.vera_seed, device)
        for path in paths:
            base = backbone.get_submodule(path)
            self.replace(backbone, path, VeraLinear(base, self.projections, o.vera_rank, o.vera_d_init))
        return []

    def extra_state(self) -> dict[str, Any]:
        """The seed and the digests of the drawn ``A`` and ``B``, which are not saved with the weights."""
        if self.projections is None:
            return {}
        return {
            "seed": self.options.vera_seed,
            "sha256": {name: digest(getattr(self.projections, name)) for name in ("vera_A", "vera_B")},
        }

    def load_extra_state(self, backbone: nn.Module, state: dict[str, Any]) -> None:
        """Check that the ``A`` and ``B`` drawn again from the seed are those the saved run was trained with."""
        if state.get("seed") != self.options.vera_seed:
            raise ConfigError(
                f"vera: the saved run records seed {state.get('seed')!r} for its frozen projections, but its options "
                f"say --vera_seed {self.options.vera_seed}: the saved config is inconsistent."
            )
        recorded_digests = state.get("sha256")
        if not isinstance(recorded_digests, dict) or set(recorded_digests) != {"vera_A", "vera_B"}:
            raise ConfigError(
                f"vera: the saved run's extra state has no digests of vera_A and vera_B (sha256: {recorded_digests!r})."
            )
        for name, recorded in recorded_digests.items():
            drawn = digest(getattr(self.projections, name))
            if drawn != recorded:
                raise ConfigError(
                    f"vera: {name} drawn again from seed {self.options.vera_seed} (sha256 {drawn[:12]}...) is not the "
                    f"one the run was trained with ({str(recorded)[:12]}...): this torch draws other random numbers, "
                    "so the saved run cannot be rebuilt."
                )
