"""What every method shares: the method interface (its docstring is the checklist for adding one), the registry,
the options every run has, the assembled ``PeftArguments``, and injection.

Each method owns its options: a dataclass in the method's file, registered with it (``options_class``), as
HuggingFace ``peft`` registers a config class with each tuner. :func:`assemble_peft_arguments` puts the shared
options and every registered method's options into ONE flat dataclass, ``PeftArguments``, so the command line,
JSON argument files, sweeps and ``run_config.json`` (under ``peft_args``) keep one flat namespace of names
(``lora_rank``, ``bottleneck_dim``...).

Injection is two-phase, as in HuggingFace ``peft``: every method first *checks* that it applies (architecture,
roles, layer indices, options) without touching the model, and only then are the methods applied. A bad
configuration therefore never leaves a half-modified model.
"""

from __future__ import annotations

import base64
import dataclasses
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from peftlab.architectures import Architecture, architecture_of, layers_of, parse_layers
from peftlab.errors import ConfigError


@dataclass
class SharedArguments:
    """Which method(s) run and where: the options every run has, whatever its method."""

    method: str = field(
        default="full",
        metadata={
            "help": "Method, or several joined by '+'; each may name its own layers with '@', e.g. "
            "'adapter@1+lora@all'."
        },
    )
    target_layers: str = field(
        default="all",
        metadata={"help": "Layers of methods without '@': 'all', an index ('5', '-1' from the top), '1,3' or '0-2'."},
    )
    num_hidden_layers: int | None = field(
        default=None, metadata={"help": "Keep only the backbone's first N layers (for per-layer probes)."}
    )

    def __post_init__(self) -> None:
        for name, _ in parse_method_string(self.method):
            if name not in METHODS:
                raise ConfigError(f"Unknown method {name!r}. Valid methods: {', '.join(METHODS)}.")


def parse_roles(text: str, option: str, valid: tuple[str, ...], allow_empty: bool = False) -> tuple[str, ...]:
    """A comma list of roles (``all``: every valid role), naming the valid ones on error."""
    if text.strip() == "all":
        return valid
    if allow_empty and not text.strip():
        return ()
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    bad = [r for r in roles if r not in valid]
    if bad or not roles:
        raise ConfigError(f"--{option} {text!r}: {bad or 'empty'} not valid; choose from {', '.join(valid)}.")
    return roles


def check_choices(options: Any, choices: dict[str, tuple]) -> None:
    """Raise a one-line :class:`ConfigError` for an option outside its choices."""
    for name, valid in choices.items():
        if getattr(options, name) not in valid:
            raise ConfigError(f"--{name} {getattr(options, name)!r} is not valid; choose one of {', '.join(valid)}.")


def check_positive(options: Any, *names: str) -> None:
    for name in names:
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(options, name)}.")


def pack_indices(indices: torch.Tensor) -> str:
    """Flat indices as base64 of little-endian int32 (a weight matrix has fewer than 2**31 entries)."""
    return base64.b64encode(indices.detach().cpu().numpy().astype("<i4").tobytes()).decode("ascii")


def unpack_indices(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype="<i4").astype(np.int64))


def batch_loss(model: nn.Module, batch: Mapping[str, Any], device: torch.device, option: str) -> torch.Tensor:
    """The model's loss on one batch (moved to ``device``), for a mask chosen from training data by ``option``;
    refused when the batch has no labels."""
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    loss = model(**batch).loss
    if loss is None:
        raise ConfigError(f"{option} needs batches with labels (the loss chooses the mask).")
    return loss


def innermost_linear(module: nn.Module) -> nn.Module:
    """The layer inside the wrappers of methods applied before (the chain of ``base_layer``): what a method that
    may wrap another one's wrapper (VeRA and (IA)^3 around LoRA's) reads the shape of."""
    while isinstance(getattr(module, "base_layer", None), nn.Module):
        module = module.base_layer
    return module


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class TunerLayer(nn.Module):
    """Base of every module a method adds. Parameters are found by this type, never by their names."""

    def tuner_parameters(self) -> list[nn.Parameter]:
        """This module's own parameters, excluding any wrapped ``base_layer``."""
        base = getattr(self, "base_layer", None)
        skip = {id(p) for p in base.parameters()} if isinstance(base, nn.Module) else set()
        return [p for p in self.parameters() if id(p) not in skip]


class Method:
    """One PEFT method applied to a set of layers.

    Adding a method is one file in ``peftlab/methods/`` (the package imports every module in it) and one row in
    ``CASES`` of ``tests/test_methods.py``. In that file, in this order:

    1. **Options**: a dataclass of the method's own options, every field with ``metadata={"help": ...}`` (they
       become ``run_glue.py`` flags and JSON keys, so name them after the method: ``lora_rank``), validated in
       ``__post_init__`` with one-line :class:`ConfigError` messages. Set it as ``options_class``.
    2. **Identity**: subclass :class:`Method`, set ``name`` (the ``--method`` name) and decorate with
       :func:`register`. Set ``order`` < 10 if it wraps a plain ``nn.Linear`` that others may wrap later;
       ``trains_backbone`` if it trains every backbone weight; ``trains_layers = False`` if it adds nothing to
       the layers (a probe).
    3. ``check(backbone, arch)``: raise :class:`ConfigError` for everything that cannot work, *before anything
       is modified* (it runs on a weightless copy first). Find targets with :meth:`resolve`, which refuses roles
       the architecture lacks and a method that would touch nothing, naming the method, the roles and the
       layers. Refuse architectures whose blocks do not fit (with the reason, from the role table).
    4. ``apply(backbone, arch)``: modify the backbone. New modules subclass :class:`TunerLayer` (they train and
       are found by type); wrap or swap modules with :meth:`replace`; return the existing parameters to
       unfreeze, recording their modules with :meth:`adapted`. ``self.targeted_modules`` is what the run
       reports as adapted.
    5. **Protocol presets**: ``paper_learning_rate`` and ``paper_options`` are what ``--protocol paper`` gives the
       method, with the file and line of the paper's code beside each value (``docs/paper_protocol.md``); name
       in ``paper_ours`` the ones that are this project's choice instead (a value the paper's scripts leave to
       the command line, or a method the paper does not have). A method without ``paper_learning_rate`` is
       refused by that protocol. ``--protocol quick`` needs nothing: it follows ``trains_backbone``.
    6. Optional hooks: :meth:`merged_for_eval` (fold the method into the base weights while evaluating, as LoRA
       does), :meth:`export` (write the trained method in another library's format), and :meth:`extra_state` /
       :meth:`load_extra_state` for what a reloaded run needs beyond its options and trained parameters (VeRA:
       the seed of its frozen random projections).
    """

    name: ClassVar[str]
    options_class: ClassVar[type | None] = None
    """The method's own options dataclass (its fields join ``PeftArguments``)."""
    trains_backbone: ClassVar[bool] = False
    """Only ``full`` leaves the backbone trainable; every other method freezes it first."""
    trains_layers: ClassVar[bool] = True
    """False for a method that adds and trains nothing in the layers (``probe``: the head alone trains)."""
    order: ClassVar[int] = 10
    """Application order: methods that wrap a base ``nn.Linear`` (LoRA) must come before those that wrap anything."""
    paper_learning_rate: ClassVar[float | None] = None
    """Learning rate of the method and the head under ``--protocol paper``; ``None``: that protocol refuses it."""
    paper_options: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """The method's options under ``--protocol paper`` (those not named keep their defaults)."""
    paper_ours: ClassVar[tuple[str, ...]] = ()
    """Which of ``learning_rate`` and ``options`` in the paper preset are this project's choice, not the paper's
    code's (recorded so that a reader of the protocol can tell them apart)."""

    def __init__(self, options: Any, layers: list[int]) -> None:
        self.options = options
        self.layers = layers
        self.targeted_modules: list[str] = []
        """Paths (from the backbone) of the modules this method adapted, filled by :meth:`apply`."""

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        """Raise :class:`ConfigError` if the method cannot be applied; must not modify anything."""

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        """Modify ``backbone``; return the existing backbone parameters to unfreeze (new modules train anyway)."""
        raise NotImplementedError

    @contextmanager
    def merged_for_eval(self, backbone: nn.Module) -> Iterator[None]:
        """Within the block, evaluate with the method folded into the base weights (default: nothing to fold)."""
        yield

    def prepare(self, model: nn.Module, batches: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Choose what depends on the training data, once, before training starts (FISH's mask: squared gradients
        over a few batches). ``model`` is the whole classifier as initialised; ``batches()`` iterates over the
        training set in a fixed order, with labels, so a resumed run chooses the same again. Default: nothing."""

    def held_at_zero(self) -> int:
        """How many entries of the parameters this method adds never train (a pruned adapter's): the run's
        parameter counts leave them out. Default: none."""
        return 0

    def export(self, model: nn.Module, output_dir: Path) -> Path | None:
        """Write the trained method in another library's format under ``output_dir``; the path, or ``None``."""
        return None

    def extra_state(self) -> dict[str, Any]:
        """What rebuilding this method exactly needs beyond its options and its trained parameters, as a
        JSON-serialisable dict (default: nothing). A saved run records it in ``peftlab_model.json`` (under
        ``extra_state``, by method name) because frozen tensors are not saved: a method whose frozen tensors are
        drawn at random records how to draw them again, and what it drew, so a reload can prove it got the same."""
        return {}

    def load_extra_state(self, backbone: nn.Module, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` recorded, on a freshly applied method before its trained parameters
        are loaded; raise :class:`ConfigError` where it cannot be restored exactly (the reloaded run would compute
        something else). Called only for a method the saved run recorded state for."""
        if state:
            raise ConfigError(f"{self.name} keeps no extra state, but the saved run records {sorted(state)} for it.")

    # -- helpers ------------------------------------------------------------------------------------------
    def path(self, arch: Architecture, layer: int, role: str) -> str:
        return f"{arch.layers}.{layer}.{arch.roles[role]}"

    def module(self, backbone: nn.Module, arch: Architecture, layer: int, role: str) -> nn.Module:
        return layers_of(backbone, arch)[layer].get_submodule(arch.roles[role])

    def resolve(
        self,
        backbone: nn.Module,
        arch: Architecture,
        roles: tuple[str, ...],
        option: str,
        explicit: bool = True,
    ) -> list[tuple[int, str]]:
        """``(layer, role)`` of every target in the method's layers. A role named ``explicit``-ly that the
        architecture lacks is an error; otherwise (a whole block, ``all``) such roles are passed over. Nothing
        left to touch is an error too. Both name the method, the roles and the layers."""
        model_type = backbone.config.model_type
        missing = [role for role in roles if not arch.has(role)]
        if missing and explicit:
            hint = ""
            if {"query", "key", "value"} & set(missing) and arch.has("qkv"):
                hint = " Its query, key and value are one fused linear layer: name the role 'qkv'."
            raise ConfigError(
                f"{self.name} would touch nothing at {', '.join(missing)} in layers {self.layers}: {model_type} has "
                f"no such role (--{option}; its roles: {', '.join(arch.roles)}).{hint}"
            )
        present = [role for role in roles if arch.has(role)]
        if not present:
            raise ConfigError(
                f"{self.name} would touch nothing: {model_type} has none of {', '.join(roles)} (--{option}) in "
                f"layers {self.layers}."
            )
        return [(layer, role) for layer in self.layers for role in present]

    def replace(self, backbone: nn.Module, path: str, new: nn.Module) -> None:
        replace_module(backbone, path, new)
        self.adapted(path)

    def adapted(self, path: str) -> None:
        if path not in self.targeted_modules:
            self.targeted_modules.append(path)


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method (and with it its options class) to the registry under its ``name``."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise TypeError(f"Two methods are named {cls.name!r}.")
    METHODS[cls.name] = cls
    return cls


def option_classes() -> list[type]:
    """The shared options, then every registered method's options class (each once), in registration order."""
    classes: list[type] = [SharedArguments]
    for method in METHODS.values():
        if method.options_class is not None and method.options_class not in classes:
            classes.append(method.options_class)
    return classes


class PeftArgumentsBase:
    """Behaviour of the assembled ``PeftArguments``: each options class validates its own fields."""

    def __post_init__(self) -> None:
        for cls in option_classes():
            self.options_for(cls)  # builds it, which runs its checks

    def options_for(self, cls: type) -> Any:
        """The options object of one class (a method's ``options_class``) from these flat values."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})


def assemble_peft_arguments() -> type:
    """One flat dataclass of the shared options and every registered method's options (for HfArgumentParser,
    JSON argument files and ``run_config.json``). Two options classes may not declare the same name."""
    specs: list[tuple[str, Any, Any]] = []
    owner: dict[str, str] = {}
    for cls in option_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in owner:
                raise TypeError(f"Option {f.name!r} is declared by both {owner[f.name]} and {cls.__name__}.")
            owner[f.name] = cls.__name__
            metadata = dict(f.metadata)
            if cls is SharedArguments and f.name == "method":
                metadata["help"] = f"{metadata['help']} Methods: {', '.join(METHODS)}."
            specs.append((f.name, hints[f.name], field(default=f.default, metadata=metadata)))
    cls = dataclasses.make_dataclass(
        "PeftArguments",
        specs,
        bases=(PeftArgumentsBase,),
        namespace={"__doc__": "Which parameters train: the method(s), where they go, and every method's options."},
    )
    cls.__module__ = "peftlab.methods"  # where it lives (pickle finds it there)
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
    """What was injected, for the run's report and the methods' hooks."""

    methods: list[tuple[str, list[int]]]
    method_params: int
    """The parameters the methods train (their entries held at zero left out)."""
    targeted_modules: list[str] = field(default_factory=list)
    """Paths (from the backbone) of the modules the methods actually adapted, in the order they did."""
    applied: list[Method] = field(default_factory=list, repr=False, compare=False)
    """The method objects, whose hooks (evaluation-time merge, export) the model and the run call."""


def inject(backbone: nn.Module, args: Any) -> Injection:
    """Check every requested method, then freeze the backbone (unless ``full``) and apply them.

    ``args`` is a ``PeftArguments`` (the assembled dataclass): each method gets its own options object from it.
    """
    arch = architecture_of(backbone)
    num_layers = len(layers_of(backbone, arch))
    methods = []
    for name, layers in parse_method_string(args.method):
        cls = METHODS[name]
        options = args.options_for(cls.options_class) if cls.options_class is not None else None
        methods.append(cls(options, parse_layers(layers or args.target_layers, num_layers)))
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
    applied = sorted(methods, key=lambda m: m.order)
    for method in applied:
        for param in method.apply(backbone, arch):
            param.requires_grad_(True)
            unfrozen[id(param)] = param
        if method.trains_layers and not method.targeted_modules:
            raise RuntimeError(f"{method.name} passed its checks but adapted no module (a bug in the method).")
    for module in backbone.modules():
        if isinstance(module, TunerLayer):
            for param in module.tuner_parameters():
                unfrozen[id(param)] = param
    count = sum(p.numel() for p in unfrozen.values()) - sum(m.held_at_zero() for m in methods)
    if any(m.trains_backbone for m in methods):
        count = sum(p.numel() for p in backbone.parameters())
    return Injection(
        methods=[(m.name, m.layers) for m in methods],
        method_params=count,
        targeted_modules=[path for m in applied for path in m.targeted_modules],
        applied=methods,
    )
