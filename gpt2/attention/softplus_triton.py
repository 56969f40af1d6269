r"""Fused causal softplus attention in Triton: forward, backward and split-K decode.

This module checks the inputs and launches the kernels of :mod:`gpt2.attention.softplus_kernels`; its
docstring is the kernels' design.
The math, what the kernels save and where they run: docs/attention.md ("The scores", "The fused softplus
kernels"). In its notation, per batch and head: ``s_ij = scale q_i . k_j - m_h (i - j)`` for keys ``j <= i``,
``w_ij = softplus(lam_i s_ij)``, ``l_i = sum_j w_ij``, ``o_i = sum_j w_ij v_j / l_i``; query row ``r`` sits
at absolute position ``i = r + Lk - Lq``. Without ALiBi slopes the ``ALIBI`` constexpr compiles the bias out.
What follows is how the kernels compute that.

Base 2. With ``t = lam_i s_ij log2(e)`` the kernels compute ``w2 = log2(1 + 2^t) = w_ij / ln 2`` as
``max(t, 0) + log2(1 + y)``, ``y = 2^-|t|``. The factor ``1 / ln 2`` cancels in ``o``; the saved ``l`` is
converted back to natural units. The special-function unit is the scarce resource, so each score costs one
``ex2`` there, and ``log2(1 + y)`` on ``[0, 1]`` is a polynomial on the FMA pipe (``_log2_1p``) that keeps
its relative accuracy for tiny ``y``: very negative scores keep their weights instead of rounding to zero.

ALiBi in base 2: ``t = c_i (q_i . k_j) + a_i (j - i)`` with the row factors ``c_i = lam_i scale log2(e)`` and
``a_i = lam_i log2(e) m_h = c_i m_h / scale``. A tile whose keys start at ``j0`` forms it as
``(c_i (q_i . k_j) + a_i (j0 - i)) + a_i (j - j0)``: two FMAs per score. The distance is split at the tile,
not expanded into ``a_i j - a_i i``, whose two large terms would cancel at long contexts and leave an error
of about ``a_i i 2^-24`` on the near-diagonal keys that carry the weight (2e-5 relative at 30,000 positions,
against 4e-7).

Rows of very negative scores. A row whose weights sum to less than ``e^SHIFT_BELOW`` (fp32 weights underflow
below about -87) is recomputed with ``t + shift_i``, its largest t moved to ``SHIFT_BELOW log2(e)``, as the
reference's ``shift_low_rows`` does; its saved ``l`` is then the log of its sum (below SHIFT_BELOW: negative,
where a sum is positive). The recompute is a kernel of its own after the forward (in the decode, a branch of
the combine), so that the forward's code and registers stay the common path's. The backward shifts such a
row so that its weights sum to ``e^SHIFT_BELOW``; the shift rides in the FMA that scales t (0 for the other
rows).

Backward per-row factors. With ``D_i = dO_i . o_i``, ``sigma`` the logistic function and
``c_i = lam_i scale / l_i``, the kernels form the gradient of the dot product,
``dL/d(q_i . k_j) = sigma(lam_i s_ij) (c_i dO_i . v_j - c_i D_i)``: one FMA and the sigmoid per score. A
preprocessing kernel computes, once per row, ``lam_i scale log2(e)`` (for t), ``ln2 / l_i`` (for w / l), the
row's shift of t and ``c_i D_i``: one 16-byte record, so that the loops never divide per row and fetch a row's
factors with one load (``c_i`` is the product of the first two: a multiply per row). ``sigma = 1/(1+y)`` for
``t >= 0`` and ``y/(1+y)`` otherwise: the dK/dV kernel reuses the ``2^-|t|`` it needs for ``w`` (dV) and adds
one reciprocal (``1 + y`` lies in ``[1, 2]``); dQ takes ``1/(1 + 2^-t)`` directly. dK/dV come from one
kernel that walks the query blocks of a key block, and by default dQ from a second that walks the key blocks
of a query block: it recomputes the scores but needs no atomics, so gradients are bitwise reproducible for a
given tile config (the autotuner's pick, cached per machine). With ``SOFTPLUS_ATOMIC_DQ=1`` (or
:func:`use_atomic_dq`) the dK/dV kernel instead adds each tile's ``dS^T K`` into an fp32 dQ with atomic adds.

Products run on tensor cores in the input dtype with fp32 accumulation (the weights and dS are rounded to it
for the second product); fp32 inputs use TF32 only when PyTorch's matmul precision allows it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
import triton

from gpt2.attention.softplus_kernels.backward import _bwd_dkdv_kernel, _bwd_dq_kernel, _bwd_preprocess_kernel
from gpt2.attention.softplus_kernels.common import _RESCUE_CONFIG, DECODE_MAX_Q_LEN, DTYPES, HEAD_DIMS, INTERPRET, LOG2E
from gpt2.attention.softplus_kernels.decode import _decode_combine_kernel, _decode_partial_kernel
from gpt2.attention.softplus_kernels.forward import _fwd_kernel, _rescue_kernel

# Launch option: the polynomial and the score scaling are written for fused multiply-adds, which Triton 3.10
# and later no longer emit by default.
_FMA = dict(enable_fp_fusion=True)
_atomic_dq = os.environ.get("SOFTPLUS_ATOMIC_DQ", "0") == "1"


def atomic_dq_enabled() -> bool:
    """Whether :func:`backward` takes dQ from atomic adds by default (see :func:`use_atomic_dq`)."""
    return _atomic_dq


@contextlib.contextmanager
def use_atomic_dq(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`backward` takes dQ from atomic adds in the dK/dV kernel (``enabled``) or
    from its own kernel; outside, ``SOFTPLUS_ATOMIC_DQ=1`` decides (see the module docstring)."""
    global _atomic_dq
    previous, _atomic_dq = _atomic_dq, enabled
    try:
        yield
    finally:
        _atomic_dq = previous


# Outputs and workspaces come from torch.empty and torch.empty_like, unfilled: the kernels write every element
# (tests/test_softplus_kernel.py makes these allocations return NaN to check that).
def _new_buffer(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


def _unit_stride_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    # Triton launches on the current CUDA device, which need not be the one the tensors live on.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow PyTorch's matmul setting: TF32 tensor cores only when allowed (e.g. --allow_tf32),
    # else true fp32 products (slow, but within ~1e-6 of the reference). fp16/bf16 ignore this.
    if dtype != torch.float32:
        return "tf32"
    try:
        exact = torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:  # raised once the per-backend setting has been used: read that one
        exact = torch.backends.cuda.matmul.fp32_precision != "tf32"
    return "ieee" if exact else "tf32"


def check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, slopes: torch.Tensor | None = None
) -> None:
    """Raise ValueError unless the shapes, dtypes and devices are ones the kernels handle."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    same_bhd = k.shape[:2] == q.shape[:2] and k.shape[3:] == q.shape[3:]
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or not same_bhd:
        raise ValueError(f"expected q (B, H, Lq, D) and k, v (B, H, Lk, D); got {shapes}")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"q_len exceeds kv_len ({shapes}): queries are the last q_len of kv_len positions")
    if q.shape[3] not in HEAD_DIMS:
        raise ValueError(f"the softplus attention kernel supports head_dim {HEAD_DIMS}, got {q.shape[3]}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype of {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if lam.shape != q.shape[2:3] or lam.dtype != torch.float32:
        raise ValueError(f"lam must be float32 of shape (q_len,) = ({q.shape[2]},); got {lam.dtype} "
                         f"{tuple(lam.shape)}")
    if not (q.device == k.device == v.device == lam.device):
        devices = f"{q.device}, {k.device}, {v.device}, {lam.device}"
        raise ValueError(f"q, k, v, lam must share a device; got {devices}")
    if slopes is not None:
        if slopes.shape != q.shape[1:2] or slopes.dtype != torch.float32:
            raise ValueError(f"alibi slopes must be float32 of shape (heads,) = ({q.shape[1]},); got {slopes.dtype} "
                             f"{tuple(slopes.shape)}")
        if slopes.device != q.device:
            raise ValueError(f"alibi slopes must be on q's device {q.device}; got {slopes.device}")
    if q.device.type not in ("cuda", "meta") and not INTERPRET:
        raise ValueError(f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1); got {q.device}")


def forward_output_like(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (o, l) for queries q. o is (B, H, Lq, D) laid out as (B, Lq, H, D), so that the model's
    ``o.transpose(1, 2).reshape(B, Lq, H * D)`` is a view; l is (B, H, Lq) fp32."""
    B, H, q_len, D = q.shape
    o = _new_buffer((B, q_len, H, D), q).transpose(1, 2)
    return o, _new_buffer((B, H, q_len), q, torch.float32)


def _alibi_args(slopes: torch.Tensor | None, lam: torch.Tensor, scale: float) -> tuple[torch.Tensor, float, bool]:
    """The kernels' (SLOPES, inv_scale, ALIBI). Without slopes, SLOPES is a placeholder (lam: any fp32
    pointer) that the code compiled for ALIBI=False never reads."""
    if slopes is None:
        return lam, 1.0, False
    if scale == 0:
        raise ValueError("ALiBi needs a nonzero scale (the kernels derive lam_i * m_h from lam_i * scale)")
    return slopes.contiguous(), 1.0 / scale, True


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lam: torch.Tensor,
    scale: float,
    *,
    slopes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal softplus attention: (o, l) with l_i = sum_j softplus(z_ij) in fp32, z_ij = lam_i (s_ij - m_h (i - j))
    with the ALiBi ``slopes`` m_h (float32, (H,); None: no bias); for a row whose l_i is below e^SHIFT_BELOW,
    log(l_i) (negative; see the module docstring).

    Short query blocks (q_len <= DECODE_MAX_Q_LEN) go through the split-K decode kernel.
    """
    if q.shape[2] <= DECODE_MAX_Q_LEN:
        return decode_forward(q, k, v, lam, scale, slopes=slopes)
    return flash_forward(q, k, v, lam, scale, slopes=slopes)


def flash_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lam: torch.Tensor,
    scale: float,
    *,
    slopes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiled forward: one program per (query block, batch * head), streaming the visible key blocks."""
    check_inputs(q, k, v, lam, slopes)
    q, k, v = map(_unit_stride_last, (q, k, v))
    lam = lam.contiguous()
    slopes, inv_scale, alibi = _alibi_args(slopes, lam, scale)
    B, H, q_len, D = q.shape
    kv_len = k.shape[2]
    o, l = forward_output_like(q)
    if o.numel() == 0:
        return o, l
    with _on_device(q):
        _fwd_kernel[lambda meta: (B * H, triton.cdiv(q_len, meta["BLOCK_M"]))](
            q, k, v, lam, o, l, scale * LOG2E,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
            H, q_len, kv_len, triton.next_power_of_2(q_len), triton.next_power_of_2(kv_len),
            triton.next_power_of_2(B * H), slopes, inv_scale,
            HEAD_DIM=D, DOT_PRECISION=_dot_precision(q.dtype), ALIBI=alibi, **_FMA,
        )
        rescue = _RESCUE_CONFIG
        _rescue_kernel[(B * H, triton.cdiv(q_len, rescue.kwargs["BLOCK_M"]))](
            q, k, v, lam, o, l, scale * LOG2E, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
            H, q_len, kv_len, slopes, inv_scale,
            HEAD_DIM=D, DOT_PRECISION=_dot_precision(q.dtype), ALIBI=alibi, **rescue.kwargs,
            num_warps=rescue.num_warps, num_stages=rescue.num_stages, **_FMA,
        )
    return o, l


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: any small number exercises the split logic


def decode_chunk(kv_len: int, batch_heads: int, device: torch.device) -> int:
    """Keys per split: enough splits for about two programs per SM, each at least 256 keys long."""
    min_chunk = 256
    splits = max(1, min(triton.cdiv(2 * _num_sms(device), batch_heads), triton.cdiv(kv_len, min_chunk)))
    return triton.cdiv(triton.cdiv(kv_len, splits), min_chunk) * min_chunk


def decode_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lam: torch.Tensor,
    scale: float,
    chunk: int | None = None,
    *,
    slopes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash-decoding for q_len <= DECODE_MAX_Q_LEN: each program sums one chunk of keys (default:
    :func:`decode_chunk`) for one (batch, head), so a single query against a long cache still fills the
    GPU; a second kernel adds the partial sums up."""
    check_inputs(q, k, v, lam, slopes)
    q, k, v = map(_unit_stride_last, (q, k, v))
    lam = lam.contiguous()
    slopes, inv_scale, alibi = _alibi_args(slopes, lam, scale)
    B, H, q_len, D = q.shape
    kv_len = k.shape[2]
    if q_len > DECODE_MAX_Q_LEN:
        raise ValueError(f"decode_forward handles q_len <= {DECODE_MAX_Q_LEN}, got {q_len}")
    o, l = forward_output_like(q)
    if o.numel() == 0:
        return o, l
    chunk = chunk or decode_chunk(kv_len, B * H, q.device)
    splits = triton.cdiv(kv_len, chunk)
    acc = _new_buffer((B * H, splits, DECODE_MAX_Q_LEN, D), q, torch.float32)
    lsum = _new_buffer((B * H, splits, DECODE_MAX_Q_LEN), q, torch.float32)
    with _on_device(q):
        _decode_partial_kernel[(B * H, splits)](
            q, k, v, lam, acc, lsum, scale * LOG2E,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            H, q_len, kv_len, chunk, triton.next_power_of_2(chunk), slopes, inv_scale,
            HEAD_DIM=D, DOT_PRECISION=_dot_precision(q.dtype), ALIBI=alibi, BLOCK_M=DECODE_MAX_Q_LEN, **_FMA,
        )
        _decode_combine_kernel[(B * H,)](
            acc, lsum, o, l, *o.stride()[:3], H, q_len, splits,
            q, k, v, lam, scale * LOG2E, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], kv_len, slopes, inv_scale,
            HEAD_DIM=D, DOT_PRECISION=_dot_precision(q.dtype), ALIBI=alibi, BLOCK_M=DECODE_MAX_Q_LEN,
            BLOCK_N=_RESCUE_CONFIG.kwargs["BLOCK_N"], num_warps=4, **_FMA,
        )
    return o, l


def backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    l: torch.Tensor,
    lam: torch.Tensor,
    scale: float,
    atomic_dq: bool | None = None,
    *,
    slopes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the forward's saved (o, l) (computed with the same ALiBi ``slopes``); see the module
    docstring for the formulas. dQ comes from atomic adds in the dK/dV kernel if ``atomic_dq`` (default:
    :func:`atomic_dq_enabled`)."""
    check_inputs(q, k, v, lam, slopes)
    if do.shape != q.shape or o.shape != q.shape or do.dtype != q.dtype or l.shape != q.shape[:3]:
        raise ValueError(f"backward: do {tuple(do.shape)} {do.dtype}, o {tuple(o.shape)}, l {tuple(l.shape)} "
                         f"do not match q {tuple(q.shape)} {q.dtype}")
    q, k, v, o, do = map(_unit_stride_last, (q, k, v, o, do))
    l, lam = l.contiguous(), lam.contiguous()
    slopes, inv_scale, alibi = _alibi_args(slopes, lam, scale)
    B, H, q_len, D = q.shape
    kv_len = k.shape[2]
    dq, dk, dv = map(torch.empty_like, (q, k, v))  # their strides when dense (as here), else contiguous
    if q.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    factors = _new_buffer((B, H, q_len, 4), q, torch.float32)
    atomic = _atomic_dq if atomic_dq is None else atomic_dq
    dq_acc = torch.zeros((B, H, q_len, D), dtype=torch.float32, device=q.device) if atomic else dq
    preprocess_rows = 32 if INTERPRET else 64
    lengths = (H, q_len, kv_len, *(triton.next_power_of_2(n) for n in (q_len, kv_len, B * H)))
    constants = dict(HEAD_DIM=D, DOT_PRECISION=_dot_precision(q.dtype), ALIBI=alibi, **_FMA)
    with _on_device(q):
        _bwd_preprocess_kernel[(B * H, triton.cdiv(q_len, preprocess_rows))](
            o, do, l, lam, factors, scale, scale * LOG2E, *o.stride()[:3], *do.stride()[:3], H, q_len,
            HEAD_DIM=D, BLOCK_M=preprocess_rows, **_FMA,
        )
        _bwd_dkdv_kernel[lambda meta: (B * H, triton.cdiv(kv_len, meta["BLOCK_N"]))](
            q, k, v, do, factors, dk, dv, dq_acc,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
            *dk.stride()[:3], *dv.stride()[:3], *lengths, slopes, inv_scale, ATOMIC_DQ=atomic, **constants,
        )
        if atomic:
            dq.copy_(dq_acc)
        else:
            _bwd_dq_kernel[lambda meta: (B * H, triton.cdiv(q_len, meta["BLOCK_M"]))](
                q, k, v, do, factors, dq,
                *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
                *lengths, slopes, inv_scale, **constants,
            )
    return dq, dk, dv
