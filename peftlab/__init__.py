"""peftlab: parameter-efficient fine-tuning experiments on GLUE.

Reproduces and extends "On the Effectiveness of Parameter Efficient Methods: Sparsity and FFNs Matter".
The library (this package outside :mod:`peftlab.lab`) puts the methods on a model and trains it; the public API
is :mod:`peftlab.api`, importable from here (``peftlab.classifier``, ``peftlab.inject``, ``peftlab.save``, ...).
The package is deliberately not called ``peft``: a top-level ``peft`` would shadow HuggingFace's ``peft``
and break ``transformers`` at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "available_methods",
    "CachedCollator",
    "FrozenPrefixCache",
    "Injection",
    "SequenceClassifier",
    "cache_datasets",
    "classifier",
    "inject",
    "load",
    "model_path",
    "peft_arguments",
    "save",
    "trainable_state_dict",
]
_FROM = {"FrozenPrefixCache": "peftlab.cache", "CachedCollator": "peftlab.cache", "cache_datasets": "peftlab.cache",
         "Injection": "peftlab.methods", "SequenceClassifier": "peftlab.modeling"}  # fmt: skip


def __getattr__(name: str):
    """The public API, imported on first use (``import peftlab`` alone loads no torch: the ``peftlab`` command
    answers ``--help`` at once)."""
    if name not in __all__:
        raise AttributeError(f"module 'peftlab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_FROM.get(name, "peftlab.api")), name)
