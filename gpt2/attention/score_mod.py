r"""What position encodings and the length scale do to the attention scores, for every attention kind.

With ``i`` the absolute position of a query (queries are the last ``Lq`` of ``Lk`` positions, so
``i = row + Lk - Lq``) and ``j`` that of a key::

    s_ij = scale * q_i . k_j  -  m_h * (i - j)          ALiBi: m_h > 0 per head (else m_h = 0)
    z_ij = lam_i * s_ij                                  lam_i = log(n_i) / log(b), n_i = i + 1 visible keys
                                                         (lam_i = 1 without a length base b)

and the attention kind turns the row ``z_i`` into weights: softmax, or softplus then l1-normalised.
The ALiBi bias is the true distance ``-(i - j)``: softmax implementations often add ``m_h * j``
instead, which only softmax's shift invariance makes equal; softplus is not shift-invariant.
RoPE acts on q and k before they get here (:mod:`gpt2.model.positions`), so it needs nothing.
"""

from __future__ import annotations

import math

import torch

from gpt2.errors import UserError

# The smallest length base a model config accepts. lam = log(n) / log(b) grows like 1 / (b - 1) as b -> 1 and
# multiplies every score (softmax: the queries, cast back to fp16/bf16). At b = 1.1, lam stays below 146 up to
# 2^20 keys, so fp16 queries and scores stay finite while |q| and |scale q . k| stay below 450 (65504 / 146), far
# above a trained model's; at b = 1.001, lam is 693 for the second query and 4870 at 130 keys, where a query entry
# of 14 overflows fp16. (bf16 has fp32's range, but rounds the scaled queries to 8 bits: its error grows with lam.)
MIN_LENGTH_BASE = 1.1


def check_length_base(length_base: float | None, flag: str = "--length_base") -> None:
    """One-line UserError unless ``length_base`` is None (off) or at least MIN_LENGTH_BASE."""
    if length_base is None or length_base >= MIN_LENGTH_BASE:
        return
    if not length_base > 1:
        raise UserError(f"{flag} must be > 1 (or None: off), got {length_base}")
    lam = [math.log(2**20) / math.log(b) for b in (length_base, MIN_LENGTH_BASE)]
    raise UserError(f"{flag} must be at least {MIN_LENGTH_BASE}, got {length_base}: the scale log(n)/log(b) grows "
                    f"like 1/(b - 1), to {lam[0]:.0f} at 2^20 keys ({lam[1]:.0f} for b = {MIN_LENGTH_BASE}), a "
                    f"factor on every score, and fp16's largest number is 65504")


def alibi_slopes(n_heads: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The ALiBi paper's head slopes, float32 ``(n_heads,)``: ``2^(-8h/H)``, h = 1..H, for a power-of-two H;
    otherwise those of the closest lower power of two p, then every other slope of 2p's for the other heads.
    Built from tensor ops on ``device`` (no host copy in the forward pass, a constant when exported)."""
    if n_heads < 1:
        raise UserError(f"ALiBi needs at least one head, got {n_heads}")
    p = 2 ** int(math.log2(n_heads))
    slopes = torch.exp2(torch.arange(1, p + 1, device=device, dtype=torch.float32) * (-8.0 / p))
    if p == n_heads:
        return slopes
    odd = torch.arange(1, 2 * (n_heads - p), 2, device=device, dtype=torch.float32)  # 2p's slopes 1, 3, 5, ...
    return torch.cat((slopes, torch.exp2(odd * (-4.0 / p))))


def length_scale(
    q_len: int,
    kv_len: int,
    length_base: float | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-query factor ``lam`` (shape ``(q_len,)``): ``log(n_i) / log(length_base)``, or ones when None."""
    if length_base is None:
        return torch.ones(q_len, device=device, dtype=dtype)
    if not length_base > 1:
        raise UserError(f"length_base must be > 1 (or None for no length scaling), got {length_base}")
    return length_scale_at(torch.arange(kv_len - q_len, kv_len, device=device, dtype=dtype), length_base)


def length_scale_at(query_positions: torch.Tensor, length_base: float | None) -> torch.Tensor:
    """``lam`` of queries at absolute ``query_positions`` (query ``i`` sees ``i + 1`` keys), in their float dtype
    (float32 for integer positions); ones when ``length_base`` is None."""
    positions = query_positions if query_positions.is_floating_point() else query_positions.float()
    if length_base is None:
        return torch.ones_like(positions)
    return torch.log(positions + 1) / math.log(length_base)


def alibi_bias(
    q_len: int,
    kv_len: int,
    slopes: torch.Tensor,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``-m_h * (i - j)``, shape ``(H, q_len, kv_len)``; positive above the diagonal, where the mask applies."""
    rows = torch.arange(kv_len - q_len, kv_len, device=device, dtype=dtype)
    cols = torch.arange(kv_len, device=device, dtype=dtype)
    return alibi_bias_at(rows, cols, slopes)


def alibi_bias_at(query_positions: torch.Tensor, key_positions: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """``-m_h * (i - j)`` for queries and keys at absolute (float) positions: ``(H, len(queries), len(keys))``."""
    distance = query_positions[:, None] - key_positions[None, :]
    return -slopes.to(device=distance.device, dtype=distance.dtype)[:, None, None] * distance


def modified_scores(
    scores: torch.Tensor, length_base: float | None = None, alibi_slopes: torch.Tensor | None = None
) -> torch.Tensor:
    """``z = lam_i * (scores + alibi)`` for ``scores (B, H, Lq, Lk) = scale * q . k`` (the causal mask is not
    applied): the definition every attention kind's reference follows."""
    q_len, kv_len = scores.shape[-2:]
    if alibi_slopes is not None:
        scores = scores + alibi_bias(q_len, kv_len, alibi_slopes, scores.device, scores.dtype)
    if length_base is not None:
        scores = scores * length_scale(q_len, kv_len, length_base, scores.device, scores.dtype).unsqueeze(-1)
    return scores
