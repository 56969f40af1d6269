"""What the softplus kernels share: constants, autotune configs and the building blocks (math in base 2, tile
loads and stores, the scores with their length scale and ALiBi bias)."""

from __future__ import annotations

import functools
import inspect
import math
import os

import torch
import triton
import triton.language as tl

HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DECODE_MAX_Q_LEN = 16  # q_len up to this goes through the split-K decode kernel (one 16-row tile)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Rows whose weights sum to less than e^SHIFT_BELOW are recomputed shifted ("Rows of very negative scores" in
# gpt2.attention.softplus_triton's docstring): the reference's threshold (gpt2.attention.softplus.SHIFT_BELOW).
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
    queries) with KEYS_FIRST. The distance is split at first_key (see :mod:`gpt2.attention.softplus_triton`)."""
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
