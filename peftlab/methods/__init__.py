"""The PEFT methods. Each lives in its own module with its options and registers itself; importing this package
imports every module in it, then assembles ``PeftArguments`` from the registered options classes.

Adding a method: one file here (the checklist is :class:`~peftlab.methods.base.Method`'s docstring) and one row
in ``CASES`` of ``tests/test_methods.py``.
"""

from __future__ import annotations

import importlib
import pkgutil

from peftlab.methods.base import METHODS, Injection, Method, TunerLayer, assemble_peft_arguments, inject, register

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

PeftArguments = assemble_peft_arguments()
"""Every run's method options in one flat dataclass: the shared ones (``method``, ``target_layers``,
``num_hidden_layers``) and each registered method's own options class."""

__all__ = ["METHODS", "Injection", "Method", "PeftArguments", "TunerLayer", "inject", "register"]
