"""Decoding: split-K over the keys (a few query rows against a long cache), then a combine pass."""

from __future__ import annotations

import triton
import triton.language as tl

from gpt2.attention.softplus_kernels.common import _DECODE_CONFIGS, _LN2, _LOW_SUM, _head
from gpt2.attention.softplus_kernels.forward import _fwd_inner, _query_tile, _rescue_rows


@triton.autotune(configs=_DECODE_CONFIGS, key=["HEAD_DIM", "CHUNK_KEY", "DOT_PRECISION", "ALIBI"],
                 cache_results=True)
@triton.jit
def _decode_partial_kernel(
    Q, K, V, LAM, ACC, LSUM, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    H, Q_LEN, KV_LEN, CHUNK, CHUNK_KEY, SLOPES, inv_scale,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIBI: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Partial (sum w v, sum w) of all (<= BLOCK_M) queries over one chunk of keys."""
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q, row_scale, head_rate, k_base, v_base = _query_tile(
        Q, K, V, LAM, SLOPES, qk_scale, inv_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb,
        stride_vh, pid_bh, H, Q_LEN, offs_m, offs_d, ALIBI)

    lo = split * CHUNK
    kv_end = tl.minimum(lo + CHUNK, KV_LEN)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, l_acc = _fwd_inner(acc, l_acc, q, row_scale, 0.0, head_rate, k_base, v_base, stride_kn, stride_vn,
                            offs_m, offs_d, lo, kv_end, KV_LEN - Q_LEN, kv_end, BLOCK_N, True, DOT_PRECISION, ALIBI,
                            False)
    # Workspace row (pid_bh, split) holds all BLOCK_M query rows (those past Q_LEN: finite junk).
    row = pid_bh.to(tl.int64) * tl.num_programs(1) + split
    tl.store(ACC + (row * BLOCK_M + offs_m[:, None]) * HEAD_DIM + offs_d[None, :], acc)
    tl.store(LSUM + row * BLOCK_M + offs_m, l_acc)


@triton.jit
def _decode_combine_kernel(
    ACC, LSUM, O, L, stride_ob, stride_oh, stride_om, H, Q_LEN, NUM_SPLITS,
    Q, K, V, LAM, qk_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, KV_LEN, SLOPES, inv_scale,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIBI: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """o = (sum of the partial sums w v) / (sum of the partial sums w): no rescaling, unlike softmax. Rows
    whose sum is below e^SHIFT_BELOW are then recomputed over all their keys (_rescue_rows), as after the
    tiled forward."""
    pid_bh = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for split in range(0, NUM_SPLITS):
        row = pid_bh.to(tl.int64) * NUM_SPLITS + split
        acc += tl.load(ACC + (row * BLOCK_M + offs_m[:, None]) * HEAD_DIM + offs_d[None, :])
        l_acc += tl.load(LSUM + row * BLOCK_M + offs_m)
    l = l_acc * _LN2
    low = (l < _LOW_SUM) & (offs_m < Q_LEN)
    kept = (offs_m < Q_LEN) & ~low  # low rows are stored by _rescue_rows alone: no two writes race
    o_ptrs = _head(O, pid_bh, H, stride_ob, stride_oh) + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, (acc / l_acc[:, None]).to(O.dtype.element_ty), mask=kept[:, None])
    tl.store(L + pid_bh.to(tl.int64) * Q_LEN + offs_m, l, mask=kept)
    if tl.max(low.to(tl.int32), 0) != 0:
        _rescue_rows(Q, K, V, LAM, O, L, qk_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, pid_bh, H, Q_LEN, KV_LEN,
                     SLOPES, inv_scale, offs_m, low, KV_LEN, HEAD_DIM, DOT_PRECISION, ALIBI, BLOCK_M, BLOCK_N)
