"""What every method shares: its options (one dataclass), the method interface, the registry, and injection.

Injection is two-phase, as in HuggingFace ``peft``: every method first *checks* that it applies (architecture,
layer indices, options) without touching the model, and only then are the methods applied. A bad configuration
therefore never leaves a half-modified model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from peftlab.architectures import LINEAR_ROLES, Architecture, architecture_of, layers_of, parse_layers
from peftlab.errors import ConfigError


@dataclass
class PeftArguments:
    """Which parameters train: the method(s), where they go, and their options."""

    method: str = field(
        default="full",
        metadata={
            "help": "Method, or several joined by '+'; each may name its own layers with '@', e.g. "
            "'adapter@1+lora@all'. Methods: full, probe, bitfit, lora, adapter, prefix, ffn, attn."
        },
    )
    target_layers: str = field(
        default="all",
        metadata={"help": "Layers of methods without '@': 'all', an index ('5', '-1' from the top), '1,3' or '0-2'."},
    )
    num_hidden_layers: int | None = field(
        default=None, metadata={"help": "Keep only the backbone's first N layers (for per-layer probes)."}
    )
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
            "sequential, after the block's LayerNorm; parallel, in place of the block's residual input."
        },
    )
    adapter_scaling: float = field(
        default=1.0, metadata={"help": "Adapter output scale s (He et al.'s scaled parallel adapter uses 4)."}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_init: str = field(
        default="kaiming",
        metadata={
            "help": "Initialisation of A (B starts at zero): kaiming (HF peft's default) or normal (N(0, 1), as the "
            "paper's code)."
        },
    )
    lora_targets: str = field(
        default="query,value",
        metadata={"help": f"Comma-separated linear roles LoRA adapts: {', '.join(LINEAR_ROLES)}."},
    )
    prefix_length: int = field(default=16, metadata={"help": "Number of trainable key/value pairs per layer."})
    prefix_reparam: bool = field(
        default=True, metadata={"help": "Produce the prefix through an MLP (Li & Liang's reparameterisation)."}
    )
    prefix_hidden: int = field(default=512, metadata={"help": "Hidden width of the prefix MLP."})
    bitfit_targets: str = field(
        default="all",
        metadata={
            "help": f"Roles whose biases BitFit trains: 'all' or a comma list of {', '.join(LINEAR_ROLES)}, attn_norm, ffn_norm."
        },
    )
    train_layernorm: bool = field(
        default=False, metadata={"help": "ffn/attn methods: also train the block's LayerNorm."}
    )
    train_extra_roles: str = field(
        default="",
        metadata={
            "help": "ffn/attn methods: comma list of further roles to train in the same layers, e.g. "
            "attn_out,attn_norm,ffn_norm (the paper's 'FFN only' name rule also trains those)."
        },
    )
    bitfit_offset: bool = field(
        default=False,
        metadata={
            "help": "BitFit trains a zero-initialised offset added to each bias (weight decay then pulls it toward the "
            "pretrained bias, as in the paper's code) instead of the bias itself (never weight-decayed)."
        },
    )

    def __post_init__(self) -> None:
        choices = {
            "placement": ("ffn", "attn"),
            "adapter_form": ("sequential", "parallel"),
            "adapter_activation": tuple(ACTIVATIONS),
            "adapter_init": ("zero", "normal", "model"),
            "lora_init": ("kaiming", "normal"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"--{name} {getattr(self, name)!r} is not valid; choose one of {', '.join(valid)}.")
        for name in ("bottleneck_dim", "lora_rank", "prefix_length", "prefix_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora_dropout {self.lora_dropout} must be in [0, 1).")
        for name, _ in parse_method_string(self.method):
            if name not in METHODS:
                raise ConfigError(f"Unknown method {name!r}. Valid methods: {', '.join(METHODS)}.")

    def roles(self, text: str, option: str, valid: tuple[str, ...], allow_empty: bool = False) -> tuple[str, ...]:
        """Parse a comma list of roles (``all`` = every valid role), naming the valid ones on error."""
        if text.strip() == "all":
            return valid
        if allow_empty and not text.strip():
            return ()
        roles = tuple(r.strip() for r in text.split(",") if r.strip())
        bad = [r for r in roles if r not in valid]
        if bad or not roles:
            raise ConfigError(f"--{option} {text!r}: {bad or 'empty'} not valid; choose from {', '.join(valid)}.")
        return roles


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class TunerLayer(nn.Module):
    """Base of every module a method adds. Parameters are found by this type, never by their names."""

    def tuner_parameters(self) -> list[nn.Parameter]:
        """This module's own parameters, excluding any wrapped ``base_layer``."""
        base = getattr(self, "base_layer", None)
        skip = {id(p) for p in base.parameters()} if isinstance(base, nn.Module) else set()
        return [p for p in self.parameters() if id(p) not in skip]


class Method:
    """One PEFT method applied to a set of layers. Subclasses set ``name`` and implement ``check``/``apply``."""

    name: ClassVar[str]
    trains_backbone: ClassVar[bool] = False
    """Only ``full`` leaves the backbone trainable; every other method freezes it first."""
    order: ClassVar[int] = 10
    """Application order: methods that wrap a base ``nn.Linear`` (LoRA) must come before those that wrap anything."""

    def __init__(self, args: PeftArguments, layers: list[int]) -> None:
        self.args = args
        self.layers = layers

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        """Raise :class:`ConfigError` if the method cannot be applied; must not modify anything."""

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        """Modify ``backbone``; return the existing backbone parameters to unfreeze (new modules train anyway)."""
        raise NotImplementedError

    def module(self, backbone: nn.Module, arch: Architecture, layer: int, role: str) -> nn.Module:
        return layers_of(backbone, arch)[layer].get_submodule(arch.roles[role])


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under its ``name``."""
    METHODS[cls.name] = cls
    return cls


def parse_method_string(text: str) -> list[tuple[str, str | None]]:
    """``'adapter@1+lora'`` -> ``[('adapter', '1'), ('lora', None)]``."""
    parts = [p.strip() for p in text.split("+") if p.strip()]
    if not parts:
        raise ConfigError(f"--method {text!r} names no method. Valid methods: {', '.join(METHODS)}.")
    return [(name.strip(), layers.strip() if sep else None) for name, sep, layers in (p.partition("@") for p in parts)]


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, new)


@dataclass
class Injection:
    """What was injected, for the run's report."""

    methods: list[tuple[str, list[int]]]
    method_params: int


def inject(backbone: nn.Module, args: PeftArguments) -> Injection:
    """Check every requested method, then freeze the backbone (unless ``full``) and apply them."""
    arch = architecture_of(backbone)
    num_layers = len(layers_of(backbone, arch))
    methods = [
        METHODS[name](args, parse_layers(layers or args.target_layers, num_layers))
        for name, layers in parse_method_string(args.method)
    ]
    if any(m.trains_backbone for m in methods) and len(methods) > 1:
        raise ConfigError(f"--method {args.method!r}: 'full' trains everything and cannot be combined.")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"--method {args.method!r} names a method twice; give it several layers with '@1,3'.")
    for method in methods:
        method.check(backbone, arch)
    # Checks passed: from here on the model is modified.
    if not any(m.trains_backbone for m in methods):
        backbone.requires_grad_(False)
    unfrozen: dict[int, nn.Parameter] = {}
    for method in sorted(methods, key=lambda m: m.order):
        for param in method.apply(backbone, arch):
            param.requires_grad_(True)
            unfrozen[id(param)] = param
    for module in backbone.modules():
        if isinstance(module, TunerLayer):
            for param in module.tuner_parameters():
                unfrozen[id(param)] = param
    count = sum(p.numel() for p in unfrozen.values())
    if any(m.trains_backbone for m in methods):
        count = sum(p.numel() for p in backbone.parameters())
    return Injection(methods=[(m.name, m.layers) for m in methods], method_params=count)
