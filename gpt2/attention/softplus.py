r"""Softplus attention: l1-normalised softplus of the scores.

Per batch and head, with the causal mask ``j <= i + (Lk - Lq)``::

    s_ij = (q_i . k_j) * scale            scale = 1/sqrt(head_dim) by default
    w_ij = softplus(lam_i * s_ij)         softplus(x) = log(1 + exp(x)) > 0
    o_i  = sum_j w_ij v_j / sum_j w_ij

``lam_i = 1`` by default. With ``length_base`` set, ``lam_i = log(n_i) / log(length_base)``
where ``n_i`` is the number of keys query ``i`` sees: the length-aware (entropy-invariant)
scaling proposed for softplus attention by Gao & Spratling (2025). The first query
(``n = 1``) gets ``lam = 0``, i.e. weight ``log 2`` on its one key: its output is ``v_0``.

Unlike softmax there is no normalising maximum: the weights are positive on
their own, so the row sums can be accumulated directly.

:func:`softplus_attention_reference` is the definition: plain PyTorch that
materialises the score matrix, used on CPU and as the oracle the fused Triton
kernel (:mod:`gpt2.attention.softplus_triton`) is tested against.
:func:`softplus_attention` runs the kernel on CUDA tensors. The ONNX export
spells the same math in ops ONNX runtimes run fast
(:func:`gpt2.deployment.onnx_export._softplus_attention`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt2.attention.mask import causal_mask
from gpt2.errors import UserError

try:
    from gpt2.attention import softplus_op
except ModuleNotFoundError as err:  # triton not installed (e.g. macOS): the reference serves everything
    if err.name != "triton":
        raise
    softplus_op = None


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
    n_keys = torch.arange(kv_len - q_len + 1, kv_len + 1, device=device, dtype=dtype)
    return torch.log(n_keys) / math.log(length_base)


def softplus_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    length_base: float | None = None,
) -> torch.Tensor:
    """Causal softplus attention in plain PyTorch; accumulates in fp32 (or fp64 for fp64 inputs)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q_len, kv_len = q.shape[-2], k.shape[-2]
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = (q.to(compute_dtype) @ k.to(compute_dtype).transpose(-2, -1)) * scale
    if length_base is not None:
        scores = scores * length_scale(q_len, kv_len, length_base, q.device, compute_dtype).unsqueeze(-1)
    weights = F.softplus(scores) * causal_mask(q_len, kv_len, q.device)
    out = (weights @ v.to(compute_dtype)) / weights.sum(dim=-1, keepdim=True)
    return out.to(q.dtype)


def softplus_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    length_base: float | None = None,
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
    out, _ = softplus_op.softplus_attention_op(q, k, v, lam, scale)
    return out[..., :head_dim] if padded != head_dim else out


def softplus_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    length_base: float | None = None,
) -> torch.Tensor:
    """Causal softplus attention: the fused Triton kernel where :func:`kernel_handles` the inputs, else the
    PyTorch reference."""
    if kernel_handles(q.device.type, q.dtype, q.shape[-1]):
        return softplus_attention_triton(q, k, v, scale, length_base)
    return softplus_attention_reference(q, k, v, scale, length_base)


def kernel_handles(device_type: str, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the fused kernel takes these inputs: CUDA, fp32/fp16/bf16 (not fp64, which the reference keeps
    exact), and heads up to the kernel's widest, 128 (no GPT-2 shape is wider)."""
    if softplus_op is None or device_type != "cuda":
        return False
    return dtype in softplus_op.kernels.DTYPES and head_dim <= max(softplus_op.kernels.HEAD_DIMS)
