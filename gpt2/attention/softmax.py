"""Softmax attention: PyTorch SDPA (FlashAttention on GPU) and a naive baseline.

Both take ``q (B, H, Lq, D)`` and ``k, v (B, H, Lk, D)`` with ``Lq <= Lk`` and
return ``(B, H, Lq, D)``; see :mod:`gpt2.attention.mask` for the causal alignment.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt2.attention.mask import causal_mask


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention through ``scaled_dot_product_attention``."""
    q_len, kv_len = q.shape[-2], k.shape[-2]
    if q_len == kv_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if q_len == 1:  # one new token sees the whole cache: no mask, so SDPA may pick a fused kernel
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # SDPA's is_causal aligns top-left when the lengths differ; we need bottom-right.
    mask = causal_mask(q_len, kv_len, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def softmax_naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Causal softmax attention that materialises the ``Lq x Lk`` score matrix (the seed's baseline)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    return weights.to(v.dtype) @ v
