r"""Fused causal softplus attention in Triton: forward, backward and split-K decode.

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
import inspect
import math
import os
from collections.abc import Iterator

import torch
import triton
import triton.language as tl

HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DECODE_MAX_Q_LEN = 16  # q_len up to this goes through the split-K decode kernel (one 16-row tile)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Rows whose weights sum to less than e^SHIFT_BELOW are recomputed shifted (see "Rows of very negative scores"
# in the module docstring): the reference's threshold (gpt2.attention.softplus.SHIFT_BELOW).
SHIFT_BELOW = -40.0
# Kernels may only read module globals that are constexpr.
_LN2 = tl.constexpr(LN2)
_LOG2E = tl.constexpr(LOG2E)
_LOG_LN2 = tl.constexpr(math.log(LN2))
_SHIFT_BELOW = tl.constexpr(SHIFT_BELOW)
_TOP2 = tl.constexpr(SHIFT_BELOW * LOG2E)  # a shifted row's largest t (base 2)
_LOW_SUM = tl.constexpr(math.exp(SHIFT_BELOW))
_INV_LOW_SUM = tl.constexpr(math.exp(-SHIFT_BELOW))

# Under TRITON_INTERPRET=1 (NumPy on CPU) autotuning would only be slow: use one config whose blocks are
# small enough that short test sequences still span several blocks and diagonal tiles.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# SOFTPLUS_AUTOTUNE=0 keeps only each kernel's first config (the tests on a GPU set it: tuning every test
# shape would compile hundreds of kernels).
AUTOTUNE = os.environ.get("SOFTPLUS_AUTOTUNE", "1") != "0"
# div.approx.f32: through tl.fdiv(..., approx=True) where Triton has it, else (Triton 3.5, torch 2.9's) through
# inline assembly; the interpreter, which runs no PTX, does a plain division.
_APPROX_FDIV = tl.constexpr("approx" in inspect.signature(tl.fdiv).parameters)
_PTX_DIV = tl.constexpr(not INTERPRET)


def _configs(tiles: list[dict[str, int]], warps: list[int], stages: list[int], interpret: dict[str, int]):
    if INTERPRET:
        return [triton.Config(interpret, num_warps=4, num_stages=1)]
    configs = [triton.Config(t, num_warps=w, num_stages=s) for t in tiles for w in warps for s in stages]
    return configs if AUTOTUNE else configs[:1]


def _tiles(*pairs: tuple[int, int]) -> list[dict[str, int]]:
    return [{"BLOCK_M": m, "BLOCK_N": n} for m, n in pairs]


def _prune(score_rows: str, configs, named_args, **kwargs):
    """The configs worth compiling and timing for these inputs. ``score_rows`` names the block size that
    gives the score tile its rows: BLOCK_M, or BLOCK_N in the dK/dV kernel, whose tiles are transposed.

    - Under 16 score rows per warp (a 64-row tile on 8 warps), the compiled code computes every score
      twice, on sm_80 and sm_90 alike: such a config cannot beat its 4-warp twin.
    - Tiles over 128x64 with head_dim 128 or fp32 data overflow shared memory or registers, and exact
      fp32 dots (FMA loops, no tensor cores) want small tiles and compile slowly.
    """
    args = {**named_args, **kwargs}  # Triton passes positional arguments and keywords (HEAD_DIM) apart
    limit = 128 * 128
    if args["HEAD_DIM"] >= 128 or args["Q"].dtype == torch.float32:
        limit = 128 * 64
    if args["DOT_PRECISION"] == "ieee":
        limit = 64 * 64
    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= limit and c.kwargs[score_rows] >= 16 * c.num_warps]
    return kept or configs


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
# The recompute of rows whose weights underflow is rare: one config, not tuned.
_RESCUE_CONFIG = triton.Config(_tiles((16, 16) if INTERPRET else (64, 32))[0], num_warps=4, num_stages=2)
_PRUNE_M = {"early_config_prune": functools.partial(_prune, "BLOCK_M")}
_PRUNE_N = {"early_config_prune": functools.partial(_prune, "BLOCK_N")}
# Autotune per power-of-two bucket of the lengths and of batch * heads (the grid's size), not per value
# (decoding grows the cache one token at a time); fp32's exact and TF32 dots, and the kernels with and
# without ALiBi (two more FMAs per score), are tuned apart.
_LEN_KEYS = ["HEAD_DIM", "Q_LEN_KEY", "KV_LEN_KEY", "BH_KEY", "DOT_PRECISION", "ALIBI"]
_DKDV_KEYS = [*_LEN_KEYS, "ATOMIC_DQ"]


# --------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _log2_1p(y, dtype: tl.constexpr):
    """log2(1 + y) for 0 <= y <= 1 on the FMA pipe, for inputs of ``dtype``: relative error < 1.5e-6 (fp32),
    6e-5 (fp16) or 4e-4 (bf16)."""
    # lg2.approx(1 + y) would cost a special-function op per score, the softplus kernels' scarcest
    # resource; it also needs a series for small y (1 + y drops y's low bits) and a select between the two.
    # FMA-pipe instructions replace all three: y * q(y), with q a polynomial fitted to log2(1 + y) / y for
    # least maximum relative error, keeps relative accuracy down to the smallest y. The weights of fp16 and
    # bf16 inputs are rounded to 2^-11 or 2^-9 for the second product anyway, so they get degree 4 (error
    # 5.7e-5) and 3 (3.9e-4), fp32 degree 6 (1.4e-6): each FMA saved is one instruction per score.
    # Coefficients are fp32 values, highest order first. (Horner's rule, written tensor-first: constexpr *
    # tensor would stay a constexpr in the interpreter.)
    if dtype == tl.float32:
        q = y * 0.020416272804141045 - 0.09584668278694153
        q = q * y + 0.21534612774848938
        q = q * y - 0.3391260802745819
        q = q * y + 0.47767922282218933
        q = q * y - 0.7211608290672302
        q = q * y + 1.4426932334899902
    elif dtype == tl.float16:
        q = y * 0.059651561081409454 - 0.22711949050426483
        q = q * y + 0.4418988525867462
        q = q * y - 0.7169874310493469
        q = q * y + 1.4426132440567017
    else:
        q = y * -0.10726165026426315 + 0.3664928376674652
        q = q * y - 0.7017531394958496
        q = q * y + 1.4421287775039673
    return q * y


@triton.jit
def _softplus2(t, y, dtype: tl.constexpr):
    """log2(1 + 2^t) = softplus(t ln2) / ln2, given y = 2^-|t|, for inputs of ``dtype``."""
    # No cut-off where softplus(x) = x for large x: both sides of a select would be computed anyway.
    return tl.maximum(t, 0.0) + _log2_1p(y, dtype)


@triton.jit
def _fast_div(x, y):
    """x / y as div.approx.f32 (rcp.approx and a multiply): 2 ulp for |y| < 2^126."""
    if _APPROX_FDIV:
        return tl.fdiv(x, y, approx=True)
    elif _PTX_DIV:
        return tl.inline_asm_elementwise("div.approx.f32 $0, $1, $2;", "=r,r,r", [x, y], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return x / y


@triton.jit
def _sigmoid2_times(x, t, y):
    """x / (1 + 2^-t) = x * sigmoid(t ln2), given y = 2^-|t|."""
    # 1 + y is in [1, 2], so the approximate division (rcp.approx and a multiply, 2 ulp) is safe; plain
    # "/" compiles to div.full, whose range checks cost three more instructions and two predicates.
    return _fast_div(tl.where(t >= 0.0, x, x * y), 1.0 + y)


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


@triton.jit
def _head_rate(SLOPES, pid_bh, H, inv_scale, ALIBI: tl.constexpr):
    """m_h / scale for the head of pid_bh (0 without ALIBI): a_i = t_scale_i * m_h / scale = lam_i log2(e) m_h.
    The backward has t_scale_i = lam_i scale log2(e) in its row factors, not lam_i: so it needs no fifth factor,
    and forward and backward compute a_i the same way."""
    if ALIBI:
        return tl.load(SLOPES + pid_bh % H) * inv_scale
    return 0.0


@triton.jit
def _scores(qk, t_scale, t_shift, head_rate, first_key, query_pos, N_KEYS: tl.constexpr, ALIBI: tl.constexpr,
            KEYS_FIRST: tl.constexpr, SHIFT: tl.constexpr):
    """t = t_scale_i * (q_i . k_j) + a_i * (j - i) (+ the row shift t_shift_i with SHIFT) of a tile with keys
    first_key + [0, N_KEYS) and queries at absolute positions query_pos; qk is (queries, keys), or (keys,
    queries) with KEYS_FIRST. The distance is split at first_key (see the module docstring)."""
    # Explicit FMAs: from t + (j - j0) * a_i the compiler hoists the loop-invariant tile (j - j0) * a_i out of
    # the key loop, a register per score, and adds it with an FADD that saves nothing over the FMA. The shift
    # rides in an FMA too: it costs no instruction per score.
    if not ALIBI:
        if KEYS_FIRST:
            t = tl.fma(qk, t_scale[None, :], t_shift[None, :]) if SHIFT else qk * t_scale[None, :]
        else:
            t = tl.fma(qk, t_scale[:, None], t_shift[:, None]) if SHIFT else qk * t_scale[:, None]
    else:
        rate = t_scale * head_rate
        distance = (first_key - query_pos).to(tl.float32)
        near = tl.fma(rate, distance, t_shift) if SHIFT else rate * distance  # a_i (j0 - i) (+ shift)
        offs = tl.arange(0, N_KEYS).to(tl.float32)  # j - j0
        if KEYS_FIRST:
            t = tl.fma(offs[:, None], rate[None, :], tl.fma(qk, t_scale[None, :], near[None, :]))
        else:
            t = tl.fma(offs[None, :], rate[:, None], tl.fma(qk, t_scale[:, None], near[:, None]))
    return t


# --------------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Rows whose weights underflow: recomputed shifted (see the module docstring)
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Decode: split-K over the keys, then a combine pass
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------

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
