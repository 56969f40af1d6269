"""The backward pass of fused softplus attention: per-row factors, then dK/dV and dQ."""

from __future__ import annotations

import triton
import triton.language as tl

from gpt2.attention.softplus_kernels.common import (
    _DKDV_CONFIGS,
    _DKDV_KEYS,
    _DQ_CONFIGS,
    _INV_LOW_SUM,
    _LEN_KEYS,
    _LN2,
    _LOG2E,
    _PRUNE_M,
    _PRUNE_N,
    _SHIFT_BELOW,
    _fast_div,
    _head,
    _head_rate,
    _load_rows,
    _scores,
    _sigmoid2_times,
    _softplus2,
    _store_rows,
)


@triton.jit
def _bwd_preprocess_kernel(
    O, DO, L, LAM, FACTORS, scale, qk_scale, stride_ob, stride_oh, stride_om,
    stride_dob, stride_doh, stride_dom, H, Q_LEN,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """The per-row factors of the backward, so that its loops divide by nothing per row or score: FACTORS
    ((B, H, Lq, 4) fp32) holds for each row t_scale = lam_i * qk_scale (t from q . k), p_scale = ln2 / l_i
    (w / l from w2), the shift of t and ds_shift = c_i * D_i, c_i = lam_i * scale / l_i (see _row_factors).
    A row the forward shifted (l: its log-sum, below SHIFT_BELOW) is shifted by its log-sum, so that its
    weights add up to e^SHIFT_BELOW: on such a row w / l does not depend on the shift."""
    pid_bh = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Q_LEN
    o = _load_rows(_head(O, pid_bh, H, stride_ob, stride_oh), offs_m, stride_om, offs_d, Q_LEN, True)
    do = _load_rows(_head(DO, pid_bh, H, stride_dob, stride_doh), offs_m, stride_dom, offs_d, Q_LEN, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    rows = pid_bh.to(tl.int64) * Q_LEN + offs_m
    l = tl.load(L + rows, mask=row_ok, other=1.0)
    shifted = l <= 0.0  # a log-sum (see _rescue_rows)
    inv_l = tl.where(shifted, _INV_LOW_SUM, 1.0 / l)
    lam = tl.load(LAM + offs_m, mask=row_ok, other=0.0)
    c = lam * scale * inv_l
    factors = FACTORS + rows * 4
    tl.store(factors, lam * qk_scale, mask=row_ok)
    tl.store(factors + 1, inv_l * _LN2, mask=row_ok)
    tl.store(factors + 2, tl.where(shifted, (_SHIFT_BELOW - l) * _LOG2E, 0.0), mask=row_ok)
    tl.store(factors + 3, c * delta, mask=row_ok)


@triton.jit
def _row_factors(factors_base, offs_m, row_ok, BLOCK_M: tl.constexpr):
    """(t_scale, t_shift, p_scale, ds_scale, ds_shift) of rows offs_m (zeros where not row_ok), from the rows'
    four-float records at factors_base (written by _bwd_preprocess_kernel)."""
    # One 2-D load split in registers, not four 1-D loads: Triton 3.5 loads a vector shorter than the block's
    # thread count in the score tile's layout, one masked 4-byte copy per element and thread.
    f = tl.load(factors_base + offs_m[:, None] * 4 + tl.arange(0, 4)[None, :], mask=row_ok[:, None], other=0.0)
    even, odd = tl.split(tl.reshape(f, [BLOCK_M, 2, 2]))  # columns (0, 2) and (1, 3)
    t_scale, t_shift = tl.split(even)
    p_scale, ds_shift = tl.split(odd)
    # c_i = lam_i scale / l_i = t_scale * p_scale (log2(e) ln2 = 1): a multiply per row, not a fifth float.
    return t_scale, t_shift, p_scale, t_scale * p_scale, ds_shift


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v, q_base, do_base, dq_base, factors_base, head_rate, stride_qm, stride_dom, first_key, offs_n,
    offs_d, lo, hi, diag_offset, Q_LEN, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, ATOMIC_DQ: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIBI: tl.constexpr,
):
    """Add query rows [lo, hi) to dK, dV of one key tile (and, with ATOMIC_DQ, this key tile's share to the
    fp32 dQ rows at dq_base). Score tiles are held transposed: (keys, queries)."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Q_LEN
        # Rows past Q_LEN read q = dO = 0 and zero factors: they add exactly zero.
        q = _load_rows(q_base, offs_m, stride_qm, offs_d, Q_LEN, True)
        do = _load_rows(do_base, offs_m, stride_dom, offs_d, Q_LEN, True)
        t_scale, t_shift, p_scale, ds_scale, ds_shift = _row_factors(factors_base, offs_m, row_ok, BLOCK_M)

        t = _scores(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION), t_scale, t_shift, head_rate,
                    first_key, offs_m + diag_offset, BLOCK_N, ALIBI, True, True)
        y = tl.exp2(tl.abs(t) * -1.0)  # 2^-|t| ("* -1.0": see _fwd_inner)
        p = _softplus2(t, y, v.dtype) * p_scale[None, :]  # w_ij / l_i
        dp = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        # dL / d(q_i . k_j) = sigma * c_i * (dO_i . v_j - D_i)
        ds = _sigmoid2_times(dp * ds_scale[None, :] - ds_shift[None, :], t, y)
        if MASKED:
            visible = offs_n[:, None] <= offs_m[None, :] + diag_offset
            p = tl.where(visible, p, 0.0)
            ds = tl.where(visible, ds, 0.0)
        dv = tl.dot(p.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        ds = ds.to(q.dtype)
        dk = tl.dot(ds, q, dk, input_precision=DOT_PRECISION)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(ds), k, input_precision=DOT_PRECISION)
            tl.atomic_add(dq_base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], dq, mask=row_ok[:, None],
                          sem="relaxed")
    return dk, dv


# reset_to_zero: autotuning runs the kernel many times on the real arguments; the atomic dQ must restart
# from zero each time (and before the final run), or it would return the sum of every trial.
@triton.autotune(configs=_DKDV_CONFIGS, key=_DKDV_KEYS, prune_configs_by=_PRUNE_N, cache_results=True,
                 reset_to_zero=["DQ_ACC"])
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, FACTORS, DK, DV, DQ_ACC,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    H, Q_LEN, KV_LEN, Q_LEN_KEY, KV_LEN_KEY, BH_KEY, SLOPES, inv_scale,
    HEAD_DIM: tl.constexpr, ATOMIC_DQ: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIBI: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK, dV of one key tile; with ATOMIC_DQ also its share of dQ, added into DQ_ACC ((B, H, Lq, D) fp32,
    zeroed) so that no dQ kernel recomputes the scores."""
    pid_bh = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # the first key blocks (the heaviest) first
    offs_d = tl.arange(0, HEAD_DIM)
    # Keys past KV_LEN read as zeros; they only feed dK, dV rows that are never stored.
    k = _load_rows(_head(K, pid_bh, H, stride_kb, stride_kh), offs_n, stride_kn, offs_d, KV_LEN, True)
    v = _load_rows(_head(V, pid_bh, H, stride_vb, stride_vh), offs_n, stride_vn, offs_d, KV_LEN, True)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    diag_offset = KV_LEN - Q_LEN
    # Query row i sees key j iff j <= i + diag_offset: rows below lo see none of this key tile, rows from
    # full_start on see all of it, and the rows in between (up to mid, a whole number of tiles) are masked.
    first_key = tl.program_id(1) * BLOCK_N
    lo = tl.maximum(first_key - diag_offset, 0)
    full_start = tl.minimum(tl.maximum(first_key + BLOCK_N - 1 - diag_offset, lo), Q_LEN)
    mid = lo + tl.cdiv(full_start - lo, BLOCK_M) * BLOCK_M
    q_base = _head(Q, pid_bh, H, stride_qb, stride_qh)
    do_base = _head(DO, pid_bh, H, stride_dob, stride_doh)
    rows = pid_bh.to(tl.int64) * Q_LEN
    dq_base = DQ_ACC + rows * HEAD_DIM
    factors_base = FACTORS + rows * 4
    head_rate = _head_rate(SLOPES, pid_bh, H, inv_scale, ALIBI)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, dq_base, factors_base, head_rate, stride_qm,
                             stride_dom, first_key, offs_n, offs_d, lo, mid, diag_offset, Q_LEN, HEAD_DIM, BLOCK_M,
                             BLOCK_N, True, ATOMIC_DQ, DOT_PRECISION, ALIBI)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, dq_base, factors_base, head_rate, stride_qm,
                             stride_dom, first_key, offs_n, offs_d, mid, Q_LEN, diag_offset, Q_LEN, HEAD_DIM,
                             BLOCK_M, BLOCK_N, False, ATOMIC_DQ, DOT_PRECISION, ALIBI)

    _store_rows(_head(DK, pid_bh, H, stride_dkb, stride_dkh), offs_n, stride_dkn, offs_d, KV_LEN, dk)
    _store_rows(_head(DV, pid_bh, H, stride_dvb, stride_dvh), offs_n, stride_dvn, offs_d, KV_LEN, dv)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, t_scale, t_shift, ds_scale, ds_shift, head_rate, k_base, v_base, stride_kn, stride_vn, offs_m,
    offs_d, lo, hi, diag_offset, KV_LEN, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIBI: tl.constexpr,
):
    """Add keys [lo, hi) to dQ. Needs the logistic function only, so no log2."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_kn, offs_d, KV_LEN, MASKED)
        v = _load_rows(v_base, offs_n, stride_vn, offs_d, KV_LEN, MASKED)
        t = _scores(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), t_scale, t_shift, head_rate, start_n,
                    offs_m + diag_offset, BLOCK_N, ALIBI, False, True)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        # sigma = 1 / (1 + 2^-t) directly, without the |t| split the dK/dV kernel shares with softplus:
        # 2^-t overflows to inf below t = -128, and x / inf = 0 is the right limit there.
        ds = _fast_div(dp * ds_scale[:, None] - ds_shift[:, None], 1.0 + tl.exp2(t * -1.0))
        if MASKED:
            visible = (offs_n[None, :] <= offs_m[:, None] + diag_offset) & (offs_n < KV_LEN)[None, :]
            ds = tl.where(visible, ds, 0.0)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(configs=_DQ_CONFIGS, key=_LEN_KEYS, prune_configs_by=_PRUNE_M, cache_results=True)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, FACTORS, DQ,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_dqb, stride_dqh, stride_dqm,
    H, Q_LEN, KV_LEN, Q_LEN_KEY, KV_LEN_KEY, BH_KEY, SLOPES, inv_scale,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIBI: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # heaviest first, as in the forward
    pid_bh = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Q_LEN
    q = _load_rows(_head(Q, pid_bh, H, stride_qb, stride_qh), offs_m, stride_qm, offs_d, Q_LEN, True)
    do = _load_rows(_head(DO, pid_bh, H, stride_dob, stride_doh), offs_m, stride_dom, offs_d, Q_LEN, True)
    factors_base = FACTORS + pid_bh.to(tl.int64) * Q_LEN * 4
    t_scale, t_shift, _, ds_scale, ds_shift = _row_factors(factors_base, offs_m, row_ok, BLOCK_M)
    head_rate = _head_rate(SLOPES, pid_bh, H, inv_scale, ALIBI)
    k_base = _head(K, pid_bh, H, stride_kb, stride_kh)
    v_base = _head(V, pid_bh, H, stride_vb, stride_vh)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    diag_offset = KV_LEN - Q_LEN
    full_end = (pid_m * BLOCK_M + diag_offset + 1) // BLOCK_N * BLOCK_N  # as in the forward
    hi = tl.minimum((pid_m + 1) * BLOCK_M + diag_offset, KV_LEN)
    dq = _bwd_dq_inner(dq, q, do, t_scale, t_shift, ds_scale, ds_shift, head_rate, k_base, v_base, stride_kn,
                       stride_vn, offs_m, offs_d, 0, full_end, diag_offset, KV_LEN, BLOCK_N, False, DOT_PRECISION,
                       ALIBI)
    dq = _bwd_dq_inner(dq, q, do, t_scale, t_shift, ds_scale, ds_shift, head_rate, k_base, v_base, stride_kn,
                       stride_vn, offs_m, offs_d, full_end, hi, diag_offset, KV_LEN, BLOCK_N, True, DOT_PRECISION,
                       ALIBI)
    _store_rows(_head(DQ, pid_bh, H, stride_dqb, stride_dqh), offs_m, stride_dqm, offs_d, Q_LEN, dq)
