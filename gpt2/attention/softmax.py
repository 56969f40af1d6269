"""Softmax attention: PyTorch SDPA (FlashAttention on GPU), flex attention for ALiBi on GPU, and a naive baseline.

Each takes ``q (B, H, Lq, D)`` and ``k, v (B, H, Lk, D)`` with ``Lq <= Lk`` and returns ``(B, H, Lq, D)``
(see :mod:`gpt2.attention.mask` for the causal alignment), with the scores modified as
:mod:`gpt2.attention.score_mod` defines: a length scale ``lam_i`` (Scalable-Softmax) and ALiBi slopes.

The length scale multiplies every score of row ``i``, which is the same as multiplying ``q_i``: SDPA keeps its
fused kernels. ALiBi's bias is not a product, so on a GPU it goes through ``flex_attention`` with a
``score_mod`` (compiled: no ``L x L`` tensor), and elsewhere through SDPA with the bias as an additive mask.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from gpt2.attention.mask import causal_mask
from gpt2.attention.score_mod import alibi_bias, length_scale, modified_scores
from gpt2.attention.split_cache import SplitCacheMask, row_max, split_cache_attention


def _scaled_queries(q: torch.Tensor, kv_len: int, length_base: float | None) -> torch.Tensor:
    if length_base is None:
        return q
    lam = length_scale(q.shape[-2], kv_len, length_base, q.device)
    return (q.float() * lam[:, None]).to(q.dtype)


def additive_mask(
    q_len: int, kv_len: int, dtype: torch.dtype, device: torch.device, length_base: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The causal mask as 0 / -inf, plus ``lam_i * alibi`` when ALiBi is on: ``(Lq, Lk)`` or ``(H, Lq, Lk)``.

    For SDPA on queries already multiplied by ``lam`` (see :func:`_scaled_queries`)."""
    visible = causal_mask(q_len, kv_len, device)
    bias = torch.zeros(visible.shape, dtype=dtype, device=device)
    if alibi_slopes is not None:
        lam = length_scale(q_len, kv_len, length_base, device, torch.float32)
        bias = (alibi_bias(q_len, kv_len, alibi_slopes, device) * lam[:, None]).to(dtype)
    return bias.masked_fill(~visible, float("-inf"))


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    length_base: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal softmax attention through ``scaled_dot_product_attention`` (``flex_attention`` for ALiBi on GPU)."""
    q_len, kv_len = q.shape[-2], k.shape[-2]
    q = _scaled_queries(q, kv_len, length_base)
    if alibi_slopes is not None:
        if q.is_cuda and q_len > 1:
            return _flex_alibi(q, k, v, scale, length_base, alibi_slopes, compiled=True)
        mask = additive_mask(q_len, kv_len, q.dtype, q.device, length_base, alibi_slopes)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if q_len == kv_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if q_len == 1:  # one new token sees the whole cache: no mask, so SDPA may pick a fused kernel
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # SDPA's is_causal aligns top-left when the lengths differ; we need bottom-right.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(q_len, kv_len, q.device), scale=scale)


def softmax_attention_export(
    q: torch.Tensor,
    k_past: torch.Tensor,
    v_past: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: SplitCacheMask,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax over a split cache (:func:`~gpt2.attention.split_cache.split_cache_attention`), what the ONNX
    export traces; scores in the inputs' dtype, as SDPA computes them. The mask is additive (0 / -inf): a
    boolean one exports as Where + IsNaN passes over every score matrix, which more than doubled ONNX Runtime's
    prefill time. No row is fully masked (every query sees its own key), so -inf never makes a NaN."""
    return split_cache_attention(q, k_past, v_past, k_new, v_new, mask, scale, weights=_softmax_weights, dtype=q.dtype)


def _softmax_weights(s_past: torch.Tensor, s_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    top = row_max(s_past, s_new)
    e_past, e_new = torch.exp(s_past - top), torch.exp(s_new - top)
    return e_past, e_new, e_past.sum(dim=-1, keepdim=True) + e_new.sum(dim=-1, keepdim=True)


def softmax_naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    length_base: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal softmax attention that materialises the ``Lq x Lk`` score matrix (the seed's baseline)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    scores = modified_scores(((q @ k.transpose(-2, -1)) * scale).to(compute_dtype), length_base, alibi_slopes)
    scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def _causal_block_mask(q_len: int, kv_len: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    offset = kv_len - q_len

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    return create_block_mask(causal, None, None, q_len, kv_len, device=device)


def _flex_alibi(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None,
    length_base: float | None,
    alibi_slopes: torch.Tensor,
    compiled: bool,
) -> torch.Tensor:
    """ALiBi softmax through ``flex_attention``; ``q`` already carries ``lam``. Compiled, it fuses the bias
    into a FlashAttention-style kernel; uncompiled (tests on the CPU) it runs the same math eagerly."""
    from torch.nn.attention.flex_attention import flex_attention

    q_len, kv_len = q.shape[-2], k.shape[-2]
    offset = kv_len - q_len
    lam = length_scale(q_len, kv_len, length_base, q.device)
    slopes = alibi_slopes.to(device=q.device, dtype=torch.float32)

    def alibi(score, b, h, q_idx, kv_idx):
        return score - lam[q_idx] * slopes[h] * (q_idx + offset - kv_idx)

    attend = _compiled_flex_attention() if compiled else flex_attention
    return attend(q, k, v, score_mod=alibi, block_mask=_causal_block_mask(q_len, kv_len, q.device), scale=scale)
