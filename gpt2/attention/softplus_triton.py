r"""Fused causal softplus attention in Triton: forward, backward and split-K decode.

Math (per batch and head; queries are the last ``Lq`` of ``Lk`` positions)::

    s_ij = scale * q_i . k_j            visible iff j <= i + (Lk - Lq)
    w_ij = softplus(lam_i * s_ij)       lam_i: per-row length scale (1 when off)
    l_i  = sum_j w_ij                   o_i = sum_j w_ij v_j / l_i

The weights are positive on their own, so unlike softmax there is no running
maximum to track: the kernels stream key blocks and add up ``sum w v`` and
``sum w`` directly, and split-K partials combine by plain addition.

Base-2 form. With ``t = lam_i * s_ij * log2(e)`` the kernels compute
``w2 = log2(1 + 2^t) = softplus(lam_i s_ij) / ln 2``: two hardware special
functions per score (``ex2.approx`` and ``lg2.approx``; ``tl.log2`` would be a
~20-instruction software log2f), using
``log2(1 + 2^t) = max(t, 0) + log2(1 + 2^-|t|)``. The constant ``1/ln 2``
cancels in ``o``; the saved ``l`` is converted back to natural units. For tiny
``y = 2^-|t|`` the sum ``1 + y`` drops ``y``'s low bits, so a short series
takes over there: very negative scores (where softplus attention behaves like
softmax, w ~ e^s) keep full relative accuracy instead of rounding to zero
weights and a 0/0 row. (A cut-off where softplus(x) = x would not save
anything: both sides of a select are computed anyway.)

Backward (``D_i = dO_i . o_i``, ``sigma`` the logistic function)::

    dL/dw_ij = (dO_i . v_j - D_i) / l_i
    dL/ds_ij = dL/dw_ij * lam_i * sigma(lam_i s_ij)
    dQ = dS K * scale,   dK = dS^T Q * scale,   dV = (w / l)^T dO

With ``y = 2^-|t|``: ``sigma = 1/(1+y)`` for ``t >= 0`` and ``y/(1+y)``
otherwise, so the backward reuses the recomputed ``exp2`` (plus a reciprocal,
and a ``log2`` only where ``w`` itself is needed, i.e. for dV). Following
FlashAttention-2, ``D`` comes from a small preprocessing kernel, dK/dV come from
one kernel that walks the query blocks for a key block, and dQ from a second
that walks the key blocks for a query block (no atomics; an atomic-add dQ inside
the dK/dV kernel saves recomputing the scores and is worth trying on the GPU).

Memory: the forward saves only ``o`` and ``l`` (O(B H L) extra), never an
``L x L`` matrix. Blocks wholly above the diagonal are skipped and the mask is
applied only to blocks that straddle it.

Products run on tensor cores in the input dtype with fp32 accumulation (the
weights and dS are rounded to it for the second product, as in FlashAttention);
fp32 inputs use TF32 only when PyTorch's matmul precision allows it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DECODE_MAX_Q_LEN = 16  # q_len up to this goes through the split-K decode kernel (one 16-row tile)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Kernels may only read module globals that are constexpr.
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(LN2)

# Under TRITON_INTERPRET=1 (NumPy on CPU) autotuning would only be slow: use one config whose blocks are
# small enough that short test sequences still span several blocks and diagonal tiles.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_INTERPRET = tl.constexpr(INTERPRET)


def _configs(tiles: list[dict[str, int]], warps: list[int], stages: list[int], interpret: dict[str, int]):
    if INTERPRET:
        return [triton.Config(interpret, num_warps=4, num_stages=1)]
    return [triton.Config(t, num_warps=w, num_stages=s) for t in tiles for w in warps for s in stages]


def _tiles(*pairs: tuple[int, int]) -> list[dict[str, int]]:
    return [{"BLOCK_M": m, "BLOCK_N": n} for m, n in pairs]


def _prune_big_tiles(configs, named_args, **kwargs):
    """Do not spend compiles on tiles that cannot win: over 128x64 with head_dim 128 or fp32 data they
    overflow shared memory or registers, and exact fp32 dots (FMA loops, no tensor cores) want small
    tiles and compile slowly (~30 s for a 128x128 tile)."""
    args = {**named_args, **kwargs}  # Triton passes positional arguments and keywords (HEAD_DIM) apart
    limit = 128 * 128
    if args["HEAD_DIM"] >= 128 or args["Q"].dtype == torch.float32:
        limit = 128 * 64
    if args["DOT_PRECISION"] == "ieee":
        limit = 64 * 64
    return [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= limit] or configs


# BLOCK_M: query rows per tile, BLOCK_N: key rows per tile, in every kernel. The decode kernel's BLOCK_M
# is DECODE_MAX_Q_LEN. Tuning results are cached on disk (Triton's cache dir), so each shape bucket is
# tuned once per machine.
_FWD_CONFIGS = _configs(_tiles((64, 64), (128, 32), (128, 64), (128, 128)), [4, 8], [2, 3],
                        interpret=_tiles((32, 16))[0])
_DKDV_CONFIGS = _configs(_tiles((32, 64), (32, 128), (64, 64), (64, 128)), [4, 8], [2, 3],
                         interpret=_tiles((16, 32))[0])
_DQ_CONFIGS = _configs(_tiles((64, 32), (64, 64), (128, 32), (128, 64)), [4, 8], [2, 3],
                       interpret=_tiles((32, 16))[0])
_DECODE_CONFIGS = _configs([{"BLOCK_N": n} for n in (32, 64, 128)], [4], [2, 3, 4], interpret={"BLOCK_N": 16})
_PRUNE = {"early_config_prune": _prune_big_tiles}
# Autotune per power-of-two length bucket, not per length (decoding grows the cache one token at a time).
_LEN_KEYS = ["HEAD_DIM", "Q_LEN_KEY", "KV_LEN_KEY"]


# --------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _fast_log2(x):
    # tl.log2 compiles to an accurate software log2f of some 20 instructions per element; the hardware
    # lg2.approx is one MUFU op with absolute error < 2^-22 on [1, 2], the only range used here.
    if _INTERPRET:  # the interpreter has no libdevice
        return tl.log2(x)
    else:
        return libdevice.fast_log2f(x)


@triton.jit
def _log2_1p(y):
    """log2(1 + y) for 0 <= y <= 1, with relative error below ~3e-6."""
    # 1 + y drops the low bits of a small y (and lg2.approx has an absolute error bound), so below 1/16
    # use y/ln2 * (1 - y/2 + y^2/3 - y^3/4) instead: truncation error < y^4/5 < 3e-6 relative.
    # (Horner's rule, written tensor-first: constexpr * tensor would stay a constexpr in the interpreter.)
    series = y * (((y * (-0.25 * _LOG2E) + _LOG2E / 3.0) * y - 0.5 * _LOG2E) * y + _LOG2E)
    return tl.where(y < 0.0625, series, _fast_log2(1.0 + y))


@triton.jit
def _softplus2(t, y):
    """log2(1 + 2^t) = softplus(t ln2) / ln2, given y = 2^-|t|."""
    return tl.maximum(t, 0.0) + _log2_1p(y)


@triton.jit
def _sigmoid2(t, y):
    """1 / (1 + 2^-t) = sigmoid(t ln2), given y = 2^-|t|."""
    return tl.where(t >= 0.0, 1.0, y) / (1.0 + y)


@triton.jit
def _head(ptr, pid_bh, H, stride_b, stride_h):
    """Pointer to the (batch, head) slice number pid_bh of a (B, H, L, D) tensor (64-bit offsets)."""
    return ptr + (pid_bh // H).to(tl.int64) * stride_b + (pid_bh % H).to(tl.int64) * stride_h


@triton.jit
def _load_rows(base, rows, stride, offs_d, n_rows, MASKED: tl.constexpr):
    """A (len(rows), D) tile; with MASKED, rows >= n_rows read as zeros."""
    ptrs = base + rows[:, None] * stride + offs_d[None, :]
    if MASKED:
        return tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0)
    return tl.load(ptrs)


@triton.jit
def _store_rows(base, rows, stride, offs_d, n_rows, tile):
    tl.store(base + rows[:, None] * stride + offs_d[None, :], tile.to(base.dtype.element_ty),
             mask=(rows < n_rows)[:, None])


# --------------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(
    acc, l_acc, q, row_scale, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, lo, hi, diag_offset,
    kv_end, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add keys [lo, hi) to the running (sum w v, sum w). MASKED tiles apply causality and kv_end."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_kn, offs_d, kv_end, MASKED)
        v = _load_rows(v_base, offs_n, stride_vn, offs_d, kv_end, MASKED)
        t = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * row_scale[:, None]
        w = _softplus2(t, tl.exp2(-tl.abs(t)))
        if MASKED:
            visible = (offs_n[None, :] <= offs_m[:, None] + diag_offset) & (offs_n < kv_end)[None, :]
            w = tl.where(visible, w, 0.0)
        l_acc += tl.sum(w, 1)
        acc = tl.dot(w.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_acc


@triton.autotune(configs=_FWD_CONFIGS, key=_LEN_KEYS, prune_configs_by=_PRUNE, cache_results=True)
@triton.jit
def _fwd_kernel(
    Q, K, V, LAM, O, L, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    H, Q_LEN, KV_LEN, Q_LEN_KEY, KV_LEN_KEY,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # The last query blocks see the most keys: launch them first so the tail of the grid is short.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_rows(_head(Q, pid_bh, H, stride_qb, stride_qh), offs_m, stride_qm, offs_d, Q_LEN, True)
    row_scale = tl.load(LAM + offs_m, mask=offs_m < Q_LEN, other=0.0) * qk_scale
    k_base = _head(K, pid_bh, H, stride_kb, stride_kh)
    v_base = _head(V, pid_bh, H, stride_vb, stride_vh)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    diag_offset = KV_LEN - Q_LEN
    # Keys below full_end are visible to every row of the tile (and in range); up to hi, to some rows.
    full_end = (pid_m * BLOCK_M + diag_offset + 1) // BLOCK_N * BLOCK_N
    hi = tl.minimum((pid_m + 1) * BLOCK_M + diag_offset, KV_LEN)
    acc, l_acc = _fwd_inner(acc, l_acc, q, row_scale, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                            0, full_end, diag_offset, KV_LEN, BLOCK_N, False, DOT_PRECISION)
    acc, l_acc = _fwd_inner(acc, l_acc, q, row_scale, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                            full_end, hi, diag_offset, KV_LEN, BLOCK_N, True, DOT_PRECISION)

    o_base = _head(O, pid_bh, H, stride_ob, stride_oh)
    _store_rows(o_base, offs_m, stride_om, offs_d, Q_LEN, acc / l_acc[:, None])
    tl.store(L + pid_bh.to(tl.int64) * Q_LEN + offs_m, l_acc * _LN2, mask=offs_m < Q_LEN)


# --------------------------------------------------------------------------------------------------------
# Decode: split-K over the keys, then a combine pass
# --------------------------------------------------------------------------------------------------------


@triton.autotune(configs=_DECODE_CONFIGS, key=["HEAD_DIM", "CHUNK_KEY"], cache_results=True)
@triton.jit
def _decode_partial_kernel(
    Q, K, V, LAM, ACC, LSUM, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    H, Q_LEN, KV_LEN, CHUNK, CHUNK_KEY,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Partial (sum w v, sum w) of all (<= BLOCK_M) queries over one chunk of keys."""
    split = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_rows(_head(Q, pid_bh, H, stride_qb, stride_qh), offs_m, stride_qm, offs_d, Q_LEN, True)
    row_scale = tl.load(LAM + offs_m, mask=offs_m < Q_LEN, other=0.0) * qk_scale
    k_base = _head(K, pid_bh, H, stride_kb, stride_kh)
    v_base = _head(V, pid_bh, H, stride_vb, stride_vh)

    lo = split * CHUNK
    kv_end = tl.minimum(lo + CHUNK, KV_LEN)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, l_acc = _fwd_inner(acc, l_acc, q, row_scale, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                            lo, kv_end, KV_LEN - Q_LEN, kv_end, BLOCK_N, True, DOT_PRECISION)
    # Workspace row (pid_bh, split) holds all BLOCK_M query rows (those past Q_LEN: finite junk).
    row = pid_bh.to(tl.int64) * tl.num_programs(0) + split
    tl.store(ACC + (row * BLOCK_M + offs_m[:, None]) * HEAD_DIM + offs_d[None, :], acc)
    tl.store(LSUM + row * BLOCK_M + offs_m, l_acc)


@triton.jit
def _decode_combine_kernel(
    ACC, LSUM, O, L, stride_ob, stride_oh, stride_om, H, Q_LEN, NUM_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """o = (sum of the partial sums w v) / (sum of the partial sums w): no rescaling, unlike softmax."""
    pid_bh = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for split in range(0, NUM_SPLITS):
        row = pid_bh.to(tl.int64) * NUM_SPLITS + split
        acc += tl.load(ACC + (row * BLOCK_M + offs_m[:, None]) * HEAD_DIM + offs_d[None, :])
        l_acc += tl.load(LSUM + row * BLOCK_M + offs_m)
    o_base = _head(O, pid_bh, H, stride_ob, stride_oh)
    _store_rows(o_base, offs_m, stride_om, offs_d, Q_LEN, acc / l_acc[:, None])
    tl.store(L + pid_bh.to(tl.int64) * Q_LEN + offs_m, l_acc * _LN2, mask=offs_m < Q_LEN)


# --------------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_preprocess_kernel(
    O, DO, DELTA, stride_ob, stride_oh, stride_om, stride_dob, stride_doh, stride_dom, H, Q_LEN,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """DELTA_i = dO_i . o_i (fp32)."""
    pid_bh = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    o = _load_rows(_head(O, pid_bh, H, stride_ob, stride_oh), offs_m, stride_om, offs_d, Q_LEN, True)
    do = _load_rows(_head(DO, pid_bh, H, stride_dob, stride_doh), offs_m, stride_dom, offs_d, Q_LEN, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * Q_LEN + offs_m, delta, mask=offs_m < Q_LEN)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v, q_base, do_base, lam_base, l_base, delta_base, stride_qm, stride_dom, offs_n, offs_d,
    qk_scale, scale, lo, hi, diag_offset, Q_LEN,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add query rows [lo, hi) to dK, dV of one key tile. Score tiles are held transposed: (keys, queries)."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Q_LEN
        # Rows past Q_LEN read q = dO = 0, lam = D = 0, l = 1: they then add exactly zero.
        q = _load_rows(q_base, offs_m, stride_qm, offs_d, Q_LEN, True)
        do = _load_rows(do_base, offs_m, stride_dom, offs_d, Q_LEN, True)
        lam = tl.load(lam_base + offs_m, mask=row_ok, other=0.0)
        inv_l = 1.0 / tl.load(l_base + offs_m, mask=row_ok, other=1.0)
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)

        t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * (lam * qk_scale)[None, :]
        y = tl.exp2(-tl.abs(t))
        p = _softplus2(t, y) * (inv_l * _LN2)[None, :]  # w_ij / l_i
        dp = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds = _sigmoid2(t, y) * (dp - delta[None, :]) * (lam * scale * inv_l)[None, :]  # dL / d(q_i . k_j)
        if MASKED:
            visible = offs_n[:, None] <= offs_m[None, :] + diag_offset
            p = tl.where(visible, p, 0.0)
            ds = tl.where(visible, ds, 0.0)
        dv = tl.dot(p.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.autotune(configs=_DKDV_CONFIGS, key=_LEN_KEYS, prune_configs_by=_PRUNE, cache_results=True)
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LAM, L, DELTA, DK, DV, qk_scale, scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    H, Q_LEN, KV_LEN, Q_LEN_KEY, KV_LEN_KEY,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # Keys past KV_LEN read as zeros; they only feed dK, dV rows that are never stored.
    k = _load_rows(_head(K, pid_bh, H, stride_kb, stride_kh), offs_n, stride_kn, offs_d, KV_LEN, True)
    v = _load_rows(_head(V, pid_bh, H, stride_vb, stride_vh), offs_n, stride_vn, offs_d, KV_LEN, True)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    diag_offset = KV_LEN - Q_LEN
    # Query row i sees key j iff j <= i + diag_offset: rows below lo see none of this key tile, rows from
    # full_start on see all of it, and the rows in between (up to mid, a whole number of tiles) are masked.
    first_key = tl.program_id(0) * BLOCK_N
    lo = tl.maximum(first_key - diag_offset, 0)
    full_start = tl.minimum(tl.maximum(first_key + BLOCK_N - 1 - diag_offset, lo), Q_LEN)
    mid = lo + tl.cdiv(full_start - lo, BLOCK_M) * BLOCK_M
    q_base = _head(Q, pid_bh, H, stride_qb, stride_qh)
    do_base = _head(DO, pid_bh, H, stride_dob, stride_doh)
    l_base = L + pid_bh.to(tl.int64) * Q_LEN
    delta_base = DELTA + pid_bh.to(tl.int64) * Q_LEN
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, LAM, l_base, delta_base, stride_qm, stride_dom,
                             offs_n, offs_d, qk_scale, scale, lo, mid, diag_offset, Q_LEN,
                             BLOCK_M, True, DOT_PRECISION)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, LAM, l_base, delta_base, stride_qm, stride_dom,
                             offs_n, offs_d, qk_scale, scale, mid, Q_LEN, diag_offset, Q_LEN,
                             BLOCK_M, False, DOT_PRECISION)

    _store_rows(_head(DK, pid_bh, H, stride_dkb, stride_dkh), offs_n, stride_dkn, offs_d, KV_LEN, dk)
    _store_rows(_head(DV, pid_bh, H, stride_dvb, stride_dvh), offs_n, stride_dvn, offs_d, KV_LEN, dv)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, row_scale, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, lo, hi, diag_offset,
    KV_LEN, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add keys [lo, hi) to dQ (before its per-row factor lam_i * scale / l_i). No log2 needed here."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_kn, offs_d, KV_LEN, MASKED)
        v = _load_rows(v_base, offs_n, stride_vn, offs_d, KV_LEN, MASKED)
        t = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * row_scale[:, None]
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = _sigmoid2(t, tl.exp2(-tl.abs(t))) * (dp - delta[:, None])
        if MASKED:
            visible = (offs_n[None, :] <= offs_m[:, None] + diag_offset) & (offs_n < KV_LEN)[None, :]
            ds = tl.where(visible, ds, 0.0)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(configs=_DQ_CONFIGS, key=_LEN_KEYS, prune_configs_by=_PRUNE, cache_results=True)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LAM, L, DELTA, DQ, qk_scale, scale,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_dqb, stride_dqh, stride_dqm,
    H, Q_LEN, KV_LEN, Q_LEN_KEY, KV_LEN_KEY,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest first, as in the forward
    pid_bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Q_LEN
    q = _load_rows(_head(Q, pid_bh, H, stride_qb, stride_qh), offs_m, stride_qm, offs_d, Q_LEN, True)
    do = _load_rows(_head(DO, pid_bh, H, stride_dob, stride_doh), offs_m, stride_dom, offs_d, Q_LEN, True)
    lam = tl.load(LAM + offs_m, mask=row_ok, other=0.0)
    l_row = tl.load(L + pid_bh.to(tl.int64) * Q_LEN + offs_m, mask=row_ok, other=1.0)
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * Q_LEN + offs_m, mask=row_ok, other=0.0)
    k_base = _head(K, pid_bh, H, stride_kb, stride_kh)
    v_base = _head(V, pid_bh, H, stride_vb, stride_vh)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    diag_offset = KV_LEN - Q_LEN
    full_end = (pid_m * BLOCK_M + diag_offset + 1) // BLOCK_N * BLOCK_N  # as in the forward
    hi = tl.minimum((pid_m + 1) * BLOCK_M + diag_offset, KV_LEN)
    dq = _bwd_dq_inner(dq, q, do, lam * qk_scale, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                       0, full_end, diag_offset, KV_LEN, BLOCK_N, False, DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lam * qk_scale, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                       full_end, hi, diag_offset, KV_LEN, BLOCK_N, True, DOT_PRECISION)
    dq = dq * (lam * scale / l_row)[:, None]
    _store_rows(_head(DQ, pid_bh, H, stride_dqb, stride_dqh), offs_m, stride_dqm, offs_d, Q_LEN, dq)


# --------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------

_poison = False


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Test hook: fill every output and workspace buffer with NaN before the kernels run, so elements a
    kernel fails to write show up as NaN instead of as whatever the allocator returned."""
    global _poison
    previous, _poison = _poison, True
    try:
        yield
    finally:
        _poison = previous


def _new_buffer(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    buf = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    return buf.fill_(float("nan")) if _poison else buf


def _new_like(t: torch.Tensor) -> torch.Tensor:
    buf = torch.empty_like(t)  # t's strides when t is dense, else contiguous
    return buf.fill_(float("nan")) if _poison else buf


def _unit_stride_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    # Triton launches on the current CUDA device, which need not be the one the tensors live on.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow PyTorch's matmul setting: TF32 tensor cores only when allowed (e.g. --allow_tf32),
    # else true fp32 products (slow, but within ~1e-6 of the reference). fp16/bf16 ignore this.
    fp32_exact = dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    return "ieee" if fp32_exact else "tf32"


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor) -> None:
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
    if q.device.type not in ("cuda", "meta") and not INTERPRET:
        raise ValueError(f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1); got {q.device}")


def forward_output_like(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (o, l) for queries q. o is (B, H, Lq, D) laid out as (B, Lq, H, D), so that the model's
    ``o.transpose(1, 2).reshape(B, Lq, H * D)`` is a view; l is (B, H, Lq) fp32."""
    B, H, q_len, D = q.shape
    o = _new_buffer((B, q_len, H, D), q).transpose(1, 2)
    return o, _new_buffer((B, H, q_len), q, torch.float32)


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal softplus attention: (o, l) with l_i = sum_j softplus(lam_i s_ij) in fp32.

    Short query blocks (q_len <= DECODE_MAX_Q_LEN) go through the split-K decode kernel.
    """
    if q.shape[2] <= DECODE_MAX_Q_LEN:
        return decode_forward(q, k, v, lam, scale)
    return flash_forward(q, k, v, lam, scale)


def flash_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiled forward: one program per (query block, batch * head), streaming the visible key blocks."""
    check_inputs(q, k, v, lam)
    q, k, v = map(_unit_stride_last, (q, k, v))
    B, H, q_len, D = q.shape
    kv_len = k.shape[2]
    o, l = forward_output_like(q)
    if o.numel() == 0:
        return o, l
    with _on_device(q):
        _fwd_kernel[lambda meta: (triton.cdiv(q_len, meta["BLOCK_M"]), B * H)](
            q, k, v, lam.contiguous(), o, l, scale * LOG2E,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
            H, q_len, kv_len, triton.next_power_of_2(q_len), triton.next_power_of_2(kv_len),
            HEAD_DIM=D, DOT_PRECISION=_dot_precision(q.dtype),
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash-decoding for q_len <= DECODE_MAX_Q_LEN: each program sums one chunk of keys (default:
    :func:`decode_chunk`) for one (batch, head), so a single query against a long cache still fills the
    GPU; a second kernel adds the partial sums up."""
    check_inputs(q, k, v, lam)
    q, k, v = map(_unit_stride_last, (q, k, v))
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
        _decode_partial_kernel[(splits, B * H)](
            q, k, v, lam.contiguous(), acc, lsum, scale * LOG2E,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            H, q_len, kv_len, chunk, triton.next_power_of_2(chunk),
            HEAD_DIM=D, DOT_PRECISION=_dot_precision(q.dtype), BLOCK_M=DECODE_MAX_Q_LEN,
        )
        _decode_combine_kernel[(B * H,)](
            acc, lsum, o, l, *o.stride()[:3], H, q_len, splits,
            HEAD_DIM=D, BLOCK_M=DECODE_MAX_Q_LEN, num_warps=4,
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the forward's saved (o, l); see the module docstring for the formulas."""
    check_inputs(q, k, v, lam)
    if do.shape != q.shape or o.shape != q.shape or do.dtype != q.dtype or l.shape != q.shape[:3]:
        raise ValueError(f"backward: do {tuple(do.shape)} {do.dtype}, o {tuple(o.shape)}, l {tuple(l.shape)} "
                         f"do not match q {tuple(q.shape)} {q.dtype}")
    q, k, v, o, do = map(_unit_stride_last, (q, k, v, o, do))
    l, lam = l.contiguous(), lam.contiguous()
    B, H, q_len, D = q.shape
    kv_len = k.shape[2]
    dq, dk, dv = _new_like(q), _new_like(k), _new_like(v)
    if q.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = _new_buffer((B, H, q_len), q, torch.float32)
    preprocess_rows = 32 if INTERPRET else 64
    lengths = (H, q_len, kv_len, triton.next_power_of_2(q_len), triton.next_power_of_2(kv_len))
    constants = dict(HEAD_DIM=D, DOT_PRECISION=_dot_precision(q.dtype))
    with _on_device(q):
        _bwd_preprocess_kernel[(triton.cdiv(q_len, preprocess_rows), B * H)](
            o, do, delta, *o.stride()[:3], *do.stride()[:3], H, q_len, HEAD_DIM=D, BLOCK_M=preprocess_rows,
        )
        _bwd_dkdv_kernel[lambda meta: (triton.cdiv(kv_len, meta["BLOCK_N"]), B * H)](
            q, k, v, do, lam, l, delta, dk, dv, scale * LOG2E, scale,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
            *dk.stride()[:3], *dv.stride()[:3], *lengths, **constants,
        )
        _bwd_dq_kernel[lambda meta: (triton.cdiv(q_len, meta["BLOCK_M"]), B * H)](
            q, k, v, do, lam, l, delta, dq, scale * LOG2E, scale,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
            *lengths, **constants,
        )
    return dq, dk, dv
