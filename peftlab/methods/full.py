"""Full fine-tuning: every backbone parameter trains (the paper's "finetune" row)."""

from __future__ import annotations

from torch import nn

from peftlab.architectures import Architecture
from peftlab.methods.base import Method, register


@register
class Full(Method):
    """Full fine-tuning: every backbone weight trains."""

    name = "full"
    trains_backbone = True
    paper_learning_rate = 2e-5  # finetune_glue.sh:24

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        for name, child in backbone.named_children():
            if any(True for _ in child.parameters()):
                self.adapted(name)
        return list(backbone.parameters())
