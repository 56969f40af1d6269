"""Causal attention over a KV cache held in two parts, the past and the new tokens': the form the ONNX export traces.

The exported graph gets each layer's past keys and values as a buffer of ``capacity`` positions of which the
first ``cache_len`` are filled (the rest must be finite, e.g. zeros, and are masked), and computes the new
tokens' keys and values itself. It never concatenates the two: a concat copies the whole cache on every
decode step, and so would slicing the filled part out of the buffer (ONNX runtimes have no views). Each part
gets its own scores, weights and product with its values; only the row maxima (softmax's, and softplus's
shift of very negative rows) and the row sums join the two.

Query ``i`` (of ``Lq``) sits at absolute position ``cache_len + i``: it sees every filled past key and the new
keys up to itself. Positions, the length scale and ALiBi's distances come from ``cache_len``, a tensor, so
nothing about the lengths is fixed in a traced graph; they are the same in every layer, so the model builds
them once (:func:`split_cache_mask`) and passes them to each layer's attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpt2.attention.score_mod import alibi_bias_at, length_scale_at

# The scores of the past and of the new keys (-inf where masked) -> their unnormalised weights, and the rows'
# sums of both, which divide the output.
WeightsFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SplitCacheMask:
    """What every layer's attention needs of the positions (the same in all layers: built once per forward)."""

    lam: torch.Tensor  # (Lq,) the length scale of each query (ones without a length base)
    past_bias: torch.Tensor  # (1, capacity) or, with ALiBi, (H, Lq, capacity): 0 / -inf, plus lam * alibi
    new_bias: torch.Tensor  # (Lq, Lq) or (H, Lq, Lq): the causal mask among the new tokens, likewise


def _additive_bias(
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    visible: torch.Tensor,
    lam: torch.Tensor,
    alibi_slopes: torch.Tensor | None,
) -> torch.Tensor:
    """0 / -inf for ``visible (Lq, Lk)``, plus ``lam_i * alibi`` when ALiBi is on (float32)."""
    if alibi_slopes is None:
        bias = torch.zeros(visible.shape, dtype=torch.float32, device=visible.device)
    else:
        bias = alibi_bias_at(query_pos.float(), key_pos.float(), alibi_slopes) * lam[:, None]
    return bias.masked_fill(~visible, float("-inf"))


def split_cache_mask(
    cache_len: torch.Tensor,
    q_len: int,
    capacity: int,
    device: torch.device,
    length_base: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> SplitCacheMask:
    """The mask of ``q_len`` new tokens after ``cache_len`` (an int64 scalar tensor) cached positions, of
    buffers that hold ``capacity``: query ``i`` sees the filled past and the new tokens up to itself."""
    query_pos = torch.arange(q_len, device=device) + cache_len  # an Add, not a Range that starts at cache_len
    past_pos = torch.arange(capacity, device=device)
    lam = length_scale_at(query_pos, length_base)
    past_bias = _additive_bias(query_pos, past_pos, (past_pos < cache_len)[None, :], lam, alibi_slopes)
    causal = query_pos[None, :] <= query_pos[:, None]
    return SplitCacheMask(lam, past_bias, _additive_bias(query_pos, query_pos, causal, lam, alibi_slopes))


def split_cache_attention(
    q: torch.Tensor,
    k_past: torch.Tensor,
    v_past: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: SplitCacheMask,
    scale: float | None,
    *,
    weights: WeightsFn,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``q, k_new, v_new (B, H, Lq, D)`` attending to ``k_past, v_past (B, H, capacity, D)`` and to themselves
    as ``mask`` says; scores computed in ``dtype``.

    Returns ``(B, H, Lq, D)`` laid out densely as ``(B, Lq, H, D)``: the model transposes it back.
    """
    out_dtype = q.dtype
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # The scale (and the length factor of each query) goes on q, Lq x D numbers, not on the scores.
    q = (q.float() * (mask.lam.unsqueeze(-1) * scale)).to(dtype)
    # Dense copies in and out: q arrives as a (B, T, H, D) permutation and the model reshapes the output's
    # transpose, both views only when query_len == 1, and torch's export turns that question into a guard
    # query_len != 1 (a constraint violation). The copies cost nothing in the ONNX graph.
    q = q.clone(memory_format=torch.contiguous_format)
    s_past = q @ k_past.to(dtype).transpose(-2, -1) + mask.past_bias.to(dtype)
    s_new = q @ k_new.to(dtype).transpose(-2, -1) + mask.new_bias.to(dtype)
    w_past, w_new, sums = weights(s_past, s_new)
    o = (w_past @ v_past.to(dtype) + w_new @ v_new.to(dtype)) / sums
    return o.to(out_dtype).transpose(1, 2).clone(memory_format=torch.contiguous_format).transpose(1, 2)


def row_max(s_past: torch.Tensor, s_new: torch.Tensor) -> torch.Tensor:
    """The largest score of each row over both parts, ``(B, H, Lq, 1)``; the past may have no columns (prefill),
    and a reduction over none has no maximum, so the new part's is taken first (a column, not a copy of it)."""
    return torch.cat([s_past, s_new.amax(dim=-1, keepdim=True)], dim=-1).amax(dim=-1, keepdim=True)
