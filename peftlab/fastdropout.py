"""Dropout with masks drawn four to a 64-bit random number, for training on the CPU.

On the CPU, torch's dropout draws one random number per element (``bernoulli_``), a large share of a bf16 step
of a small encoder (``scripts/bench.py --profile`` shows how large).
:func:`keep_mask` draws 64-bit integers instead and cuts each into four 15-bit uniform values, so the keep
probability is ``1 - p`` to within 1/32768 (p = 0.1: 0.1 exactly to 6e-6). It is another random stream than
torch's dropout: a run with it is another run (same distribution, other masks), deterministic under its seed.

:func:`use_fast_dropout` swaps every ``nn.Dropout`` of a model for :class:`FastDropout` and routes the attention
probabilities' dropout through :func:`attention_forward`; both fall back to torch's own dropout on a GPU, whose
dropout kernels are fast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "peftlab_fast_dropout"
"""The name :func:`attention_forward` is registered under with transformers' ``AttentionInterface``."""
LEVELS = 1 << 15


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean mask of ``shape``, each element True with probability ``1 - p`` (to within 1/32768)."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()  # 63 random bits each
    values = words.view(torch.int16)[:count] & (LEVELS - 1)  # four 15-bit values per word
    return (values >= round(p * LEVELS)).view(shape)


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` with :func:`keep_mask` on the CPU (torch's own on a GPU, or when nothing is dropped)."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    if p >= 1.0:
        return torch.zeros_like(x)
    return x.masked_fill(~keep_mask(x.shape, p, x.device), 0) * (1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask with :func:`keep_mask` (same ``p``, same state dict: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Scaled dot-product attention whose probabilities are dropped with :func:`fast_dropout`; everything it does not
    cover (no dropout, a GPU, causal attention without a mask, grouped key/value heads) goes to transformers' SDPA
    attention unchanged."""
    plain = (
        dropout == 0.0
        or not module.training
        or query.device.type != "cpu"
        or (attention_mask is None and getattr(module, "is_causal", False))
        or getattr(module, "num_key_value_groups", 1) > 1
        or kwargs.get("position_bias") is not None
    )
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask[..., : key.shape[-2]]
    weights = fast_dropout(F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype), dropout, True)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def use_fast_dropout(model: nn.Module) -> int:
    """Swap ``model``'s dropout modules for :class:`FastDropout` and its attention for :func:`attention_forward`
    (in place; no parameter changes). Returns the number of modules swapped."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention_forward)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the masks SDPA takes
    swapped = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.Dropout:
            parent, _, child = name.rpartition(".")
            fast = FastDropout(module.p, module.inplace).train(module.training)
            setattr(model.get_submodule(parent) if parent else model, child, fast)
            swapped += 1
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) in ("sdpa", "eager"):
            config._attn_implementation = ATTENTION
    return swapped
