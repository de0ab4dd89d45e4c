"""peftlab: parameter-efficient fine-tuning experiments on GLUE.

Reproduces and extends "On the Effectiveness of Parameter Efficient Methods: Sparsity and FFNs Matter".
The package is deliberately not called ``peft``: a top-level ``peft`` would shadow HuggingFace's ``peft``
and break ``transformers`` at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"
