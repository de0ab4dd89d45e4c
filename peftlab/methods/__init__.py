"""The PEFT methods. Each lives in its own module and registers itself; importing this package loads them all.

Adding a method: one file here with a :class:`~peftlab.methods.base.Method` subclass decorated with
``@register``, one import line below, and one entry in the tests' method list.
"""

from __future__ import annotations

from peftlab.methods import adapter, bitfit, block, full, lora, prefix, probe  # noqa: F401  (registration)
from peftlab.methods.base import METHODS, Injection, Method, PeftArguments, TunerLayer, inject, register

__all__ = ["METHODS", "Injection", "Method", "PeftArguments", "TunerLayer", "inject", "register"]
