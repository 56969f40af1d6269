r"""Softplus attention: l1-normalised softplus of the scores.

Per batch and head, with the causal mask ``j <= i + (Lk - Lq)``::

    z_ij = lam_i * (scale * q_i . k_j - m_h * (i - j))   see gpt2.attention.score_mod
    w_ij = softplus(z_ij)                                softplus(x) = log(1 + exp(x)) > 0
    o_i  = sum_j w_ij v_j / sum_j w_ij

``lam_i = 1`` and ``m_h = 0`` by default. With ``length_base`` set, ``lam_i = log(n_i) / log(length_base)``
where ``n_i`` is the number of keys query ``i`` sees: the length-aware (entropy-invariant)
scaling proposed for softplus attention by Gao & Spratling (2025). The first query
(``n = 1``) gets ``lam = 0``, i.e. weight ``log 2`` on its one key: its output is ``v_0``.
``alibi_slopes`` (one ``m_h`` per head) adds ALiBi's linear distance penalty.

Unlike softmax there is no normalising maximum: the weights are positive on
their own, so the row sums can be accumulated directly. Only a row whose every
score is very negative (below -40; fp32 weights underflow below about -87) is
shifted by its maximum, where softplus(z) = e^z makes o_i shift-invariant
(:func:`shift_low_rows`).

:func:`softplus_attention_reference` is the definition: plain PyTorch that
materialises the score matrix, used on CPU and as the oracle the fused Triton
kernel (:mod:`gpt2.attention.softplus_triton`) is tested against.
:func:`softplus_attention` runs the kernel on CUDA tensors. The ONNX export
spells the same math in ops ONNX runtimes run fast
(:func:`softplus_attention_export`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt2.attention.mask import causal_mask
from gpt2.attention.score_mod import length_scale, modified_scores
from gpt2.attention.split_cache import SplitCacheMask, row_max, split_cache_attention

try:
    from gpt2.attention import softplus_op
except ModuleNotFoundError as err:  # triton not installed (e.g. macOS): the reference serves everything
    if err.name != "triton":
        raise
    softplus_op = None


def softplus_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    length_base: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal softplus attention in plain PyTorch; accumulates in fp32 (or fp64 for fp64 inputs)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q_len, kv_len = q.shape[-2], k.shape[-2]
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = (q.to(compute_dtype) @ k.to(compute_dtype).transpose(-2, -1)) * scale
    scores = modified_scores(scores, length_base, alibi_slopes)
    scores = scores.masked_fill(~causal_mask(q_len, kv_len, q.device), float("-inf"))  # softplus(-inf) = 0
    weights = F.softplus(shift_low_rows(scores))
    out = (weights @ v.to(compute_dtype)) / weights.sum(dim=-1, keepdim=True)
    return out.to(q.dtype)


# Rows whose largest score is below SHIFT_BELOW get shifted up to it (see shift_low_rows). e^-40 = 4e-18 is
# below fp64's rounding error, and every weight within 47 of the row's largest score stays a normal fp32.
SHIFT_BELOW = -40.0


def shift_low_rows(scores: torch.Tensor) -> torch.Tensor:
    r"""``scores`` (masked entries -inf, every row with a finite one) minus ``c_i = min(M_i - SHIFT_BELOW, 0)``,
    ``M_i`` the row's largest score: rows that reach SHIFT_BELOW are returned as they are (minus an exact 0).

    Below it softplus(z) = e^z (1 - e^z / 2 + ...) is e^z to within e^z / 2, so the shifted row's weights
    softplus(z_ij - c_i) equal e^{-c_i} softplus(z_ij) to within e^SHIFT_BELOW relative, and the l1-normalised
    row (its output) is the same. Unshifted, a row whose every score is below about -87 (-745 in fp64) has only
    denormal or zero weights: garbage, then 0 / 0. ``c`` is a constant to autograd: the output does not depend
    on it (to that accuracy), so neither does the gradient.
    """
    return scores - low_row_shift(scores.amax(dim=-1, keepdim=True).detach())


def low_row_shift(top: torch.Tensor) -> torch.Tensor:
    """``c_i = min(M_i - SHIFT_BELOW, 0)`` of rows whose largest scores are ``top``: see :func:`shift_low_rows`."""
    return (top - SHIFT_BELOW).clamp(max=0.0)


def softplus_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    length_base: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal softplus attention through the fused Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1).

    Head dims below 128 that the kernels lack (e.g. 16, 48, 80) are zero-padded to the next one they have.
    """
    if softplus_op is None:
        raise RuntimeError("the fused softplus attention needs triton (pip install triton)")
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    lam = length_scale(q.shape[-2], k.shape[-2], length_base, q.device)
    padded = next((d for d in softplus_op.kernels.HEAD_DIMS if d >= head_dim), head_dim)
    if padded != head_dim:  # zero columns change neither q . k nor the kept columns of the output
        q, k, v = (F.pad(t, (0, padded - head_dim)) for t in (q, k, v))
    if alibi_slopes is not None:  # as the reference takes them: any float dtype, any device
        alibi_slopes = alibi_slopes.to(device=q.device, dtype=torch.float32)
    out, _ = softplus_op.softplus_attention_op(q, k, v, lam, scale, alibi_slopes)
    return out[..., :head_dim] if padded != head_dim else out


def softplus_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    length_base: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal softplus attention: the fused Triton kernel where :func:`kernel_handles` the inputs, else the
    PyTorch reference."""
    if kernel_handles(q.device.type, q.dtype, q.shape[-1]):
        return softplus_attention_triton(q, k, v, scale, length_base, alibi_slopes)
    return softplus_attention_reference(q, k, v, scale, length_base, alibi_slopes)


def kernel_handles(device_type: str, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the fused kernel takes these inputs: CUDA, fp32/fp16/bf16 (not fp64, which the reference keeps
    exact), and heads up to the kernel's widest, 128 (no GPT-2 shape is wider)."""
    if softplus_op is None or device_type != "cuda":
        return False
    return dtype in softplus_op.kernels.DTYPES and head_dim <= max(softplus_op.kernels.HEAD_DIMS)


def softplus_attention_export(
    q: torch.Tensor,
    k_past: torch.Tensor,
    v_past: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: SplitCacheMask,
    scale: float | None = None,
) -> torch.Tensor:
    """The reference over a split cache (:func:`~gpt2.attention.split_cache.split_cache_attention`) in ops ONNX
    runtimes run fast (what the ONNX export traces); scores in fp32, weights as :func:`softplus_export_weights`."""
    weights = softplus_export_weights
    return split_cache_attention(q, k_past, v_past, k_new, v_new, mask, scale, weights=weights, dtype=torch.float32)


def softplus_export_weights(
    s_past: torch.Tensor, s_new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softplus weights of the masked (-inf) scores of both parts of a split cache, and the rows' sums.

    ONNX Runtime's ``Softplus`` kernel is scalar code (slow on a CPU: docs/results.md, "Deployment on CPU"), so
    it is spelled in vectorisable elementwise ops (:func:`_softplus_elementwise`). Rows whose every score is very
    negative are shifted as the reference shifts them (:func:`shift_low_rows`), by their maximum over both parts.
    """
    shift = low_row_shift(row_max(s_past, s_new).detach())
    w_past, w_new = _softplus_elementwise(s_past - shift), _softplus_elementwise(s_new - shift)
    return w_past, w_new, w_past.sum(dim=-1, keepdim=True) + w_new.sum(dim=-1, keepdim=True)


def _softplus_elementwise(scores: torch.Tensor) -> torch.Tensor:
    """``softplus(s) = max(s, 0) + log1p(exp(-|s|))``; softplus(-inf) = 0, so masked scores need no Where."""
    y = torch.exp(-scores.abs())
    u = 1 + y
    # log1p(y) without a Log1p op: log(u) is off by the rounding error of u = 1 + y, which y - (u - 1) puts
    # back (to first order, the only one that matters: fp32-accurate down to denormals). Without it a score
    # under about -17 rounds to weight 0, and a row of such scores divides 0 by 0.
    return torch.relu(scores) + (torch.log(u) + (y - (u - 1)))
