"""Linear probe: the backbone is frozen and only the classification head trains (the paper's "raw" rows).

Combine it with ``--pooling cls|mean|last`` and ``--head linear`` for a pure probe, and with
``--num_hidden_layers k`` to probe the representation after layer k.
"""

from __future__ import annotations

from torch import nn

from peftlab.architectures import Architecture
from peftlab.methods.base import Method, register


@register
class Probe(Method):
    """A linear probe: the frozen backbone's pooled output, only the head trains."""

    name = "probe"
    trains_layers = False
    # The paper's rate is a script argument (freeze_glue.sh:26,43, $2, no default): ours is the head's rate in the
    # paper's adapter and LoRA runs.
    paper_learning_rate = 2e-3
    paper_ours = ("learning_rate",)

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        return []
