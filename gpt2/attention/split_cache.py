"""Causal attention over a KV cache held in two parts, the past and the new tokens': the form the ONNX export traces.

The exported graph gets each layer's past keys and values as a buffer of ``capacity`` positions of which the
first ``cache_len`` are filled (the rest must be finite, e.g. zeros, and are masked), and computes the new
tokens' keys and values itself. It never concatenates the two: a concat copies the whole cache on every
decode step, and so would slicing the filled part out of the buffer (ONNX runtimes have no views). The
scores of both parts are concatenated instead, ``Lq x (capacity + Lq)`` numbers without the head dim, and the
weights are split again for the two products with the values.

Query ``i`` (of ``Lq``) sits at absolute position ``cache_len + i``: it sees every filled past key and the new
keys up to itself. Positions, the length scale and ALiBi's distances come from ``cache_len``, a tensor, so
nothing about the lengths is fixed in a traced graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gpt2.attention.score_mod import alibi_bias_at, length_scale_at

# scores (B, H, Lq, Lk) with -inf where masked -> (weights, row sums to divide the output by, or None)
WeightsFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def _additive_bias(
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    visible: torch.Tensor,
    lam: torch.Tensor,
    alibi_slopes: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """0 / -inf for ``visible (Lq, Lk)``, plus ``lam_i * alibi`` when ALiBi is on: ``(Lq, Lk)`` or ``(H, Lq, Lk)``."""
    if alibi_slopes is None:
        bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    else:
        bias = (alibi_bias_at(query_pos.float(), key_pos.float(), alibi_slopes) * lam[:, None]).to(dtype)
    return bias.masked_fill(~visible, float("-inf"))


def split_cache_attention(
    q: torch.Tensor,
    k_past: torch.Tensor,
    v_past: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_len: torch.Tensor,
    scale: float | None,
    length_base: float | None,
    alibi_slopes: torch.Tensor | None,
    *,
    weights: WeightsFn,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``q, k_new, v_new (B, H, Lq, D)`` attending to ``k_past, v_past (B, H, capacity, D)`` (the first
    ``cache_len``, an int64 scalar tensor, filled) and to themselves, causally; scores computed in ``dtype``.

    Returns ``(B, H, Lq, D)`` laid out densely as ``(B, Lq, H, D)``: the model transposes it back.
    """
    q_len, capacity, out_dtype = q.shape[-2], k_past.shape[-2], q.dtype
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    query_pos = torch.arange(q_len, device=q.device) + cache_len  # an Add, not a Range that starts at cache_len
    past_pos = torch.arange(capacity, device=q.device)
    # The scale (and the length factor of each query) goes on q, Lq x D numbers, not on the scores.
    lam = length_scale_at(query_pos, length_base)
    q = (q.float() * (lam.unsqueeze(-1) * scale)).to(dtype)
    # Dense copies in and out: q arrives as a (B, T, H, D) permutation and the model reshapes the output's
    # transpose, both views only when query_len == 1, and torch's export turns that question into a guard
    # query_len != 1 (a constraint violation). The copies cost nothing in the ONNX graph.
    q = q.clone(memory_format=torch.contiguous_format)
    past_bias = _additive_bias(query_pos, past_pos, (past_pos < cache_len)[None, :], lam, alibi_slopes, dtype)
    causal = query_pos[None, :] <= query_pos[:, None]
    new_bias = _additive_bias(query_pos, query_pos, causal, lam, alibi_slopes, dtype)
    scores = torch.cat(
        [q @ k_past.to(dtype).transpose(-2, -1) + past_bias, q @ k_new.to(dtype).transpose(-2, -1) + new_bias],
        dim=-1,
    )
    w, sums = weights(scores)
    o = w[..., :capacity] @ v_past.to(dtype) + w[..., capacity:] @ v_new.to(dtype)
    if sums is not None:
        o = o / sums
    return o.to(out_dtype).transpose(1, 2).clone(memory_format=torch.contiguous_format).transpose(1, 2)
