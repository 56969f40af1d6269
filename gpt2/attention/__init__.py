"""Pluggable attention, selected by name.

Every kind is a function ``attn(q, k, v, scale=None) -> out`` on
``q (B, H, Lq, D)``, ``k, v (B, H, Lk, D)``, causal, with the queries being the
last ``Lq`` of the ``Lk`` positions (so the same call serves training and
KV-cache decoding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gpt2.attention.softmax import softmax_attention, softmax_naive_attention
from gpt2.attention.softplus import softplus_attention

AttentionFn = Callable[..., torch.Tensor]

ATTENTION: dict[str, AttentionFn] = {
    "softmax": softmax_attention,
    "softmax_naive": softmax_naive_attention,
    "softplus": softplus_attention,
}


def get_attention(name: str) -> AttentionFn:
    """Return the attention function registered under ``name``."""
    try:
        return ATTENTION[name]
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; choose one of {sorted(ATTENTION)}") from None


__all__ = ["ATTENTION", "AttentionFn", "get_attention"]
