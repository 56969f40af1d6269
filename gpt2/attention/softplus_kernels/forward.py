"""The forward pass of fused softplus attention, and the recompute of rows whose weights underflow."""

from __future__ import annotations

import triton
import triton.language as tl

from gpt2.attention.softplus_kernels.common import (
    _FWD_CONFIGS,
    _LEN_KEYS,
    _LN2,
    _LOG_LN2,
    _LOW_SUM,
    _PRUNE_M,
    _TOP2,
    _head,
    _head_rate,
    _load_rows,
    _scores,
    _softplus2,
    _store_rows,
)


@triton.jit
def _query_tile(
    Q, K, V, LAM, SLOPES, qk_scale, inv_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb,
    stride_vh, pid_bh, H, Q_LEN, offs_m, offs_d, ALIBI: tl.constexpr,
):
    """What a forward program needs of its queries offs_m: (q, row_scale = lam_i * qk_scale, head_rate, the
    head's k and v bases)."""
    q = _load_rows(_head(Q, pid_bh, H, stride_qb, stride_qh), offs_m, stride_qm, offs_d, Q_LEN, True)
    row_scale = tl.load(LAM + offs_m, mask=offs_m < Q_LEN, other=0.0) * qk_scale
    head_rate = _head_rate(SLOPES, pid_bh, H, inv_scale, ALIBI)
    return q, row_scale, head_rate, _head(K, pid_bh, H, stride_kb, stride_kh), _head(V, pid_bh, H, stride_vb, stride_vh)


@triton.jit
def _fwd_inner(
    acc, l_acc, q, row_scale, row_shift, head_rate, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, lo, hi,
    diag_offset, kv_end, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIBI: tl.constexpr, SHIFT: tl.constexpr,
):
    """Add keys [lo, hi) to the running (sum w v, sum w). MASKED tiles apply causality and kv_end. With SHIFT,
    t_ij + row_shift_i replaces t_ij."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_kn, offs_d, kv_end, MASKED)
        v = _load_rows(v_base, offs_n, stride_vn, offs_d, kv_end, MASKED)
        t = _scores(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), row_scale, row_shift, head_rate,
                    start_n, offs_m + diag_offset, BLOCK_N, ALIBI, False, SHIFT)
        # "* -1.0", not a unary minus: Triton 3.5 compiles -x as 0 - x (not -x for x = 0), which costs an add
        # per score; x * -1.0 is exactly -x and folds into ex2's operand.
        w = _softplus2(t, tl.exp2(tl.abs(t) * -1.0), v.dtype)
        if MASKED:
            visible = (offs_n[None, :] <= offs_m[:, None] + diag_offset) & (offs_n < kv_end)[None, :]
            w = tl.where(visible, w, 0.0)
        l_acc += tl.sum(w, 1)
        if v.dtype == tl.float16:
            # fp16 holds neither weights below 2^-24 (a row whose scores are all very negative, w ~ 2^t,
            # would lose every one of them in the product) nor above 65504 (scores over ~45,000 would turn
            # the row into inf and NaN). So each row of the tile is scaled by the power of two that puts its
            # largest weight in [1, 2), and the fp32 product is scaled back. bf16 has fp32's exponent range
            # and needs none of this.
            exponent = tl.floor(tl.log2(tl.maximum(tl.max(w, 1), 1e-30)))  # in [-100, 127]
            pv = tl.dot((w * tl.exp2(-exponent)[:, None]).to(v.dtype), v, input_precision=DOT_PRECISION)
            acc += pv * tl.exp2(exponent)[:, None]
        else:
            acc = tl.dot(w.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_acc


@triton.autotune(configs=_FWD_CONFIGS, key=_LEN_KEYS, prune_configs_by=_PRUNE_M, cache_results=True)
@triton.jit
def _fwd_kernel(
    Q, K, V, LAM, O, L, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    H, Q_LEN, KV_LEN, Q_LEN_KEY, KV_LEN_KEY, BH_KEY, SLOPES, inv_scale,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIBI: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # Grid (B * H, query blocks): the last query blocks see the most keys, so they come first, for every head
    # (blocks start in grid order, axis 0 fastest), and the tail of the grid is short.
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    pid_bh = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q, row_scale, head_rate, k_base, v_base = _query_tile(
        Q, K, V, LAM, SLOPES, qk_scale, inv_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb,
        stride_vh, pid_bh, H, Q_LEN, offs_m, offs_d, ALIBI)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    diag_offset = KV_LEN - Q_LEN
    # Keys below full_end are visible to every row of the tile (and in range); up to hi, to some rows.
    full_end = (pid_m * BLOCK_M + diag_offset + 1) // BLOCK_N * BLOCK_N
    hi = tl.minimum((pid_m + 1) * BLOCK_M + diag_offset, KV_LEN)
    acc, l_acc = _fwd_inner(acc, l_acc, q, row_scale, 0.0, head_rate, k_base, v_base, stride_kn, stride_vn,
                            offs_m, offs_d, 0, full_end, diag_offset, KV_LEN, BLOCK_N, False, DOT_PRECISION, ALIBI,
                            False)
    acc, l_acc = _fwd_inner(acc, l_acc, q, row_scale, 0.0, head_rate, k_base, v_base, stride_kn, stride_vn,
                            offs_m, offs_d, full_end, hi, diag_offset, KV_LEN, BLOCK_N, True, DOT_PRECISION, ALIBI,
                            False)

    o_base = _head(O, pid_bh, H, stride_ob, stride_oh)
    _store_rows(o_base, offs_m, stride_om, offs_d, Q_LEN, acc / l_acc[:, None])
    tl.store(L + pid_bh.to(tl.int64) * Q_LEN + offs_m, l_acc * _LN2, mask=offs_m < Q_LEN)


# Rows whose weights underflow: recomputed shifted (see :mod:`gpt2.attention.softplus_triton`).


@triton.jit
def _rescue_rows(
    Q, K, V, LAM, O, L, qk_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, pid_bh, H, Q_LEN, KV_LEN, SLOPES, inv_scale,
    offs_m, low, hi, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIBI: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Recompute the ``low`` rows of offs_m over keys [0, hi) with t shifted up by each row's
    shift = _TOP2 - max_j t_ij, and store their o and their log-sum as l (the other rows: neither)."""
    offs_d = tl.arange(0, HEAD_DIM)
    q, row_scale, head_rate, k_base, v_base = _query_tile(
        Q, K, V, LAM, SLOPES, qk_scale, inv_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb,
        stride_vh, pid_bh, H, Q_LEN, offs_m, offs_d, ALIBI)
    diag_offset = KV_LEN - Q_LEN
    top = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_kn, offs_d, KV_LEN, True)
        t = _scores(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), row_scale, 0.0, head_rate, start_n,
                    offs_m + diag_offset, BLOCK_N, ALIBI, False, False)
        visible = (offs_n[None, :] <= offs_m[:, None] + diag_offset) & (offs_n < KV_LEN)[None, :]
        top = tl.maximum(top, tl.max(tl.where(visible, t, float("-inf")), 1))
    shift = tl.where(low, _TOP2 - top, 0.0)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, l_acc = _fwd_inner(acc, l_acc, q, row_scale, shift, head_rate, k_base, v_base, stride_kn, stride_vn,
                            offs_m, offs_d, 0, hi, diag_offset, KV_LEN, BLOCK_N, True, DOT_PRECISION, ALIBI, True)
    o_ptrs = _head(O, pid_bh, H, stride_ob, stride_oh) + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, (acc / l_acc[:, None]).to(O.dtype.element_ty), mask=low[:, None])
    # The log of the row's sum of weights, sum_j e^(z_ij): below SHIFT_BELOW, so negative; a sum is positive.
    log_sum = (tl.log2(l_acc) - shift) * _LN2 + _LOG_LN2
    tl.store(L + pid_bh.to(tl.int64) * Q_LEN + offs_m, log_sum, mask=low)


@triton.jit
def _rescue_kernel(
    Q, K, V, LAM, O, L, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    H, Q_LEN, KV_LEN, SLOPES, inv_scale,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIBI: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """After _fwd_kernel: the rows of one block whose l (the sum of the weights) is below e^SHIFT_BELOW, if
    any, recomputed by _rescue_rows. A kernel of its own, so that the forward's registers stay the common
    path's; most programs read BLOCK_M floats and end."""
    pid_bh = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    l = tl.load(L + pid_bh.to(tl.int64) * Q_LEN + offs_m, mask=offs_m < Q_LEN, other=1.0)
    low = l < _LOW_SUM
    if tl.max(low.to(tl.int32), 0) != 0:
        hi = tl.minimum((tl.program_id(1) + 1) * BLOCK_M + KV_LEN - Q_LEN, KV_LEN)
        _rescue_rows(Q, K, V, LAM, O, L, qk_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, pid_bh, H, Q_LEN, KV_LEN,
                     SLOPES, inv_scale, offs_m, low, hi, HEAD_DIM, DOT_PRECISION, ALIBI, BLOCK_M, BLOCK_N)
