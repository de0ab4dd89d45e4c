"""Fine-tune one block of the chosen layers: the FFN (``ffn``) or the attention block (``attn``).

The paper's "fine-tune ffn" curve: with everything else frozen, training one layer's FFN comes close to full
fine-tuning. The block is defined by roles, so it is exact: the FFN is its linear layers (the gate too, in a gated
FFN such as Llama's; plus, with ``--train_layernorm``, the block's norm); the attention output projection belongs
to the attention block (whose query/key/value may be one fused layer, as GPT-2's ``c_attn``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from torch import nn

from peftlab.architectures import ATTENTION_ROLES, FFN_ROLES, ROLES, Architecture
from peftlab.methods.base import Method, parse_roles, register


@dataclass
class BlockOptions:
    """Options of ``--method ffn`` and ``--method attn``."""

    train_layernorm: bool = field(
        default=False, metadata={"help": "ffn/attn methods: also train the block's LayerNorm (or RMSNorm)."}
    )
    train_extra_roles: str = field(
        default="",
        metadata={
            "help": "ffn/attn methods: comma list of further roles to train in the same layers, e.g. "
            "attn_out,attn_norm,ffn_norm (the paper's 'FFN only' name rule also trains those)."
        },
    )

    def __post_init__(self) -> None:
        parse_roles(self.train_extra_roles, "train_extra_roles", ROLES, allow_empty=True)


class BlockFineTune(Method):
    roles: ClassVar[tuple[str, ...]]
    norm_role: ClassVar[str]
    options_class = BlockOptions
    # The paper's FFN-only rate is a script argument (ffn_hyper.sh:28-29,46, $2, no default): ours is the rate the
    # paper gives BitFit, the other method that trains pretrained parameters.
    paper_learning_rate = 2e-4
    paper_ours = ("learning_rate",)

    def targets(self, backbone: nn.Module, arch: Architecture) -> list[tuple[int, str]]:
        """The block's roles that the architecture has, its norm with ``--train_layernorm``, and the extra roles
        (which must exist)."""
        block = self.roles + ((self.norm_role,) if self.options.train_layernorm else ())
        extra = parse_roles(self.options.train_extra_roles, "train_extra_roles", ROLES, allow_empty=True)
        targets = self.resolve(backbone, arch, block, "method", explicit=False)
        if extra:
            targets += self.resolve(backbone, arch, extra, "train_extra_roles")
        return list(dict.fromkeys(sorted(targets, key=lambda t: t[0])))

    def check(self, backbone: nn.Module, arch: Architecture) -> None:
        self.targets(backbone, arch)

    def apply(self, backbone: nn.Module, arch: Architecture) -> list[nn.Parameter]:
        params = []
        for layer, role in self.targets(backbone, arch):
            self.adapted(self.path(arch, layer, role))
            params.extend(self.module(backbone, arch, layer, role).parameters())
        return params


@register
class FfnFineTune(BlockFineTune):
    """The FFN block's own weights of the chosen layers train (the paper's FFN-only fine-tuning)."""

    name = "ffn"
    roles = FFN_ROLES
    norm_role = "ffn_norm"
    # The paper's name rule ("intermediate" or "output" in a layer's parameter names, run_glue.py:259-272) also
    # trains the attention output projection and both LayerNorms.
    paper_options = MappingProxyType({"train_extra_roles": "attn_out,attn_norm,ffn_norm"})


@register
class AttnFineTune(BlockFineTune):
    """The attention block's own weights of the chosen layers train."""

    name = "attn"
    roles = ATTENTION_ROLES
    norm_role = "attn_norm"
