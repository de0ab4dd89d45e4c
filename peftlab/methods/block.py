"""Fine-tune one block of the chosen layers: the FFN (``ffn``) or the attention block (``attn``).

The paper's "fine-tune ffn" curve: with everything else frozen, training one layer's FFN comes close to full
fine-tuning. The block is defined by roles, so it is exact: the FFN is its two linear layers (plus, with
``--train_layernorm``, the LayerNorm after it); the attention output projection belongs to the attention block.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from peftlab.architectures import ATTENTION_ROLES, FFN_ROLES, LINEAR_ROLES, NORM_ROLES, Architecture
from peftlab.methods.base import Method, register


class BlockFineTune(Method):
    roles: ClassVar[tuple[str, ...]]
    norm_role: ClassVar[str]

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        self.args.roles(self.args.train_extra_roles, "train_extra_roles", LINEAR_ROLES + NORM_ROLES, allow_empty=True)

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        extra = self.args.roles(
            self.args.train_extra_roles, "train_extra_roles", LINEAR_ROLES + NORM_ROLES, allow_empty=True
        )
        roles = dict.fromkeys(self.roles + ((self.norm_role,) if self.args.train_layernorm else ()) + extra)
        return [
            p for layer in self.layers for role in roles for p in self.module(backbone, arch, layer, role).parameters()
        ]


@register
class FfnFineTune(BlockFineTune):
    name = "ffn"
    roles = FFN_ROLES
    norm_role = "ffn_norm"


@register
class AttnFineTune(BlockFineTune):
    name = "attn"
    roles = ATTENTION_ROLES
    norm_role = "attn_norm"
