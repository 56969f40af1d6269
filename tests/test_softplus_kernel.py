"""The fused Triton softplus attention kernels against a float64 PyTorch reference.

Without a GPU the real kernel code runs in Triton's interpreter (NumPy on CPU; conftest sets
TRITON_INTERPRET=1); with one, the same tests run the compiled kernels on CUDA.

Error measure: relative error = max|kernel - ref| / max|ref| over the whole tensor, with ref the
fp64 reference on the same (rounded) inputs. The denominator is floored at 1: inputs are O(1), so the
floor only matters for tensors that are exactly zero in exact arithmetic (dq and dk with a single key),
where the kernel returns rounding noise. Bounds per input dtype are in ``TOL``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from gpt2.attention import score_mod
from gpt2.attention import softplus_triton as kernels
from gpt2.attention.mask import causal_mask
from gpt2.attention.score_mod import alibi_slopes
from gpt2.attention.softplus import (
    SHIFT_BELOW,
    kernel_handles,
    length_scale,
    softplus_attention_export,
    softplus_attention_reference,
    softplus_attention_triton,
)
from gpt2.attention.softplus_kernels import common as kernel_common
from gpt2.attention.softplus_op import softplus_attention_backward_op, softplus_attention_op
from gpt2.evaluation.attention_sink import first_key_weight
from tests.conftest import split_cache_call

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


@pytest.fixture(scope="module", autouse=True)
def interpreter_bf16_like_gpu():
    """Make the interpreter's bf16 behave as on the GPU: it stores bf16 as raw uint16, so its ``tl.dot`` would
    multiply the bit patterns as integers, and its fp32 -> bf16 cast truncates. Here a bf16 dot is computed
    exactly in fp32 (as tensor cores do) and the cast rounds to nearest even (as cvt.rn.bf16.f32 does)."""
    if not kernels.INTERPRET:
        yield
        return
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle, interpreter_builder

    builder = interpreter_builder
    create_dot, cast_impl = builder.create_dot, builder.cast_impl

    def bf16_to_fp32(h):
        return TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def dot(a, b, d, *args):
        a = bf16_to_fp32(a) if a.dtype.scalar == tl.bfloat16 else a
        b = bf16_to_fp32(b) if b.dtype.scalar == tl.bfloat16 else b
        return create_dot(a, b, d, *args)

    def cast(src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = src.data.astype(np.float32).view(np.uint32)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest, ties to even
            return TensorHandle(rounded.astype(np.uint16), tl.bfloat16)
        return cast_impl(src, dst_type)

    builder.create_dot, builder.cast_impl = dot, cast
    yield
    builder.create_dot, builder.cast_impl = create_dot, cast_impl


class _TorchWithNaNEmpty:
    """``torch`` as the kernel module sees it, but a tensor from ``empty`` or ``empty_like`` starts as NaN."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs) -> torch.Tensor:
        return torch.empty(*args, **kwargs).fill_(float("nan"))

    @staticmethod
    def empty_like(*args, **kwargs) -> torch.Tensor:
        return torch.empty_like(*args, **kwargs).fill_(float("nan"))


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every output and workspace the kernel module allocates starts as NaN, so an element a kernel forgets to
    write fails the comparison."""
    monkeypatch.setattr(kernels, "torch", _TorchWithNaNEmpty())


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    assert a.shape == ref.shape
    assert torch.isfinite(a).all(), "non-finite values (unwritten output?)"
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0)).item()


def make_qkv(B, H, q_len, kv_len, D, dtype, q_scale=1.0):
    q = (torch.randn(B, H, q_len, D, device=DEVICE) * q_scale).to(dtype)
    k = torch.randn(B, H, kv_len, D, device=DEVICE).to(dtype)
    v = torch.randn(B, H, kv_len, D, device=DEVICE).to(dtype)
    return q, k, v


def reference_with_grads(q, k, v, do, length_base, scale=None, slopes=None):
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    o = softplus_attention_reference(q64, k64, v64, scale, length_base, slopes)
    o.backward(do.double())
    return o.detach(), q64.grad, k64.grad, v64.grad


def check_against_reference(q, k, v, length_base, scale=None, tol=None, slopes=None):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = softplus_attention_triton(q, k, v, scale, length_base, slopes)
    do = torch.randn_like(o)
    o.backward(do)
    expected = reference_with_grads(q, k, v, do, length_base, scale, slopes)
    tol = tol or TOL[q.dtype]
    got = (o, q.grad, k.grad, v.grad)
    errors = {name: rel_err(a, b) for name, a, b in zip(("o", "dq", "dk", "dv"), got, expected, strict=True)}
    assert max(errors.values()) < tol, errors
    return errors


# (batch, heads, q_len, kv_len, head_dim): lengths off the block sizes, q_len < kv_len (prefill against a
# cache), exact multiples, and q_len <= 16 (which goes through the split-K decode forward).
SHAPES = [
    (1, 2, 45, 45, 32),
    (2, 3, 64, 64, 64),
    (2, 1, 37, 101, 64),
    (1, 1, 130, 130, 128),
    (1, 2, 20, 83, 128),
    (2, 2, 5, 40, 64),
    (1, 1, 1, 1, 32),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("length_base", [None, 64.0])
def test_forward_and_backward_match_reference(dtype, shape, length_base):
    torch.manual_seed(zlib.crc32(repr((dtype, shape, length_base)).encode()))
    check_against_reference(*make_qkv(*shape, dtype), length_base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 1, 37, 101, 64), (1, 2, 45, 45, 32), (1, 1, 130, 130, 128)],
                         ids=lambda s: "x".join(map(str, s)))
def test_atomic_dq_matches_reference_and_the_dq_kernel(dtype, shape, monkeypatch):
    torch.manual_seed(zlib.crc32(repr((dtype, shape, "atomic")).encode()))
    q, k, v = make_qkv(*shape, dtype)
    lam = length_scale(shape[2], shape[3], 64.0, DEVICE)
    o, l = kernels.forward(q, k, v, lam, 0.2)
    do = torch.randn_like(o)
    dq, dk, dv = kernels.backward(do, q, k, v, o, l, lam, 0.2)

    monkeypatch.setattr(kernels, "_bwd_dq_kernel", None)  # the atomic path must not need it
    with kernels.use_atomic_dq():
        check_against_reference(q, k, v, 64.0)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = softplus_attention_triton(*leaves, length_base=64.0)
    out.backward(do)  # after the block: the backward keeps the variant its forward ran under
    dq_atomic, dk_atomic, dv_atomic = kernels.backward(do, q, k, v, o, l, lam, 0.2, atomic_dq=True)
    # dK, dV come from the same code either way; dQ is summed in another order, in fp32 both times.
    assert torch.equal(dk, dk_atomic) and torch.equal(dv, dv_atomic)
    assert rel_err(dq_atomic, dq) < TOL[dtype] / 10


def steep_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi slopes 1/2, 1/4, ... (the paper's first slopes for 8 heads): the first head's bias outweighs the
    scores a few keys back, so these short tests see weights decay by orders of magnitude along a row."""
    return torch.tensor(alibi_slopes(8)[:n_heads], device=DEVICE)


# Ragged tiled lengths with q_len == kv_len and q_len < kv_len, and a short query block (the decode forward,
# then the tiled backward).
ALIBI_SHAPES = [(1, 2, 45, 45, 32), (2, 3, 37, 101, 64), (1, 2, 5, 40, 64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", ALIBI_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("length_base", [None, 64.0])
def test_alibi_matches_reference(dtype, shape, length_base):
    torch.manual_seed(zlib.crc32(repr((dtype, shape, length_base, "alibi")).encode()))
    check_against_reference(*make_qkv(*shape, dtype), length_base, slopes=steep_slopes(shape[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_alibi_with_atomic_dq_matches_reference_and_the_dq_kernel(dtype):
    torch.manual_seed(zlib.crc32(repr((dtype, "alibi atomic")).encode()))
    shape = (2, 3, 37, 101, 64)
    q, k, v = make_qkv(*shape, dtype)
    slopes = steep_slopes(shape[1])
    with kernels.use_atomic_dq():
        check_against_reference(q, k, v, 64.0, slopes=slopes)
    lam = length_scale(shape[2], shape[3], 64.0, DEVICE)
    o, l = kernels.forward(q, k, v, lam, 0.2, slopes=slopes)
    do = torch.randn_like(o)
    dq, dk, dv = kernels.backward(do, q, k, v, o, l, lam, 0.2, atomic_dq=False, slopes=slopes)
    dq_atomic, dk_atomic, dv_atomic = kernels.backward(do, q, k, v, o, l, lam, 0.2, atomic_dq=True, slopes=slopes)
    assert torch.equal(dk, dk_atomic) and torch.equal(dv, dv_atomic)
    assert rel_err(dq_atomic, dq) < TOL[dtype] / 10


@pytest.mark.parametrize(("q_len", "dtype"), [(1, torch.float32), (16, torch.float32), (7, torch.float16)],
                         ids=str)
@pytest.mark.parametrize("length_base", [None, 64.0])
def test_alibi_decode_kernel_with_a_kv_cache(q_len, dtype, length_base):
    # The last q_len of 70 positions, in chunks of 24 keys (three splits, the last ragged): the distance must
    # count from each query's absolute position, the same in every split.
    torch.manual_seed(zlib.crc32(repr((q_len, dtype, length_base, "alibi decode")).encode()))
    q, k, v = make_qkv(2, 3, q_len, 70, 32, dtype)
    slopes = steep_slopes(3)
    lam = length_scale(q_len, 70, length_base, DEVICE)
    o, l = kernels.decode_forward(q, k, v, lam, 0.3, chunk=24, slopes=slopes)
    expected = softplus_attention_reference(q.double(), k.double(), v.double(), 0.3, length_base, slopes)
    assert rel_err(o, expected) < TOL[dtype]
    o_full, l_full = kernels.forward(q, k, v, lam, 0.3, slopes=slopes)  # one split
    assert rel_err(o, o_full) < TOL[dtype] and rel_err(l, l_full) < 1e-6


@pytest.mark.parametrize("scale", [1.0 / 4, 1.0])
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")  # NumPy's note on the intended inf
def test_custom_scale_and_wide_scores(scale):
    # Scores spread over about [-40, 40] or [-160, 160]: the linear tail (w ~ s), the exponential tail
    # (w ~ e^s) and, with scale 1, weights and sigmoids that underflow (2^-t overflows to inf in dQ).
    torch.manual_seed(1)
    q, k, v = make_qkv(2, 2, 50, 50, 64, torch.float32, q_scale=5.0)
    check_against_reference(q, k, v, None, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("length", [40, 16])  # the tiled forward, and the split-K decode (q_len <= 16)
def test_very_negative_scores_keep_relative_accuracy(dtype, length):
    # Every score is about -40: softplus(s) ~ e^s ~ 4e-18, where 1 + e^s == 1 in fp32 and which fp16 cannot
    # hold at all. The weights must keep their relative accuracy (softplus attention then behaves like
    # softmax), not round to 0/0 or to an output of zeros.
    torch.manual_seed(2)
    B, H, D = 1, 2, 32
    u = torch.nn.functional.normalize(torch.randn(D), dim=0)
    k = (u + 0.05 * torch.randn(B, H, length, D)).to(DEVICE, dtype)
    q = (-40.0 * u + 2.0 * torch.randn(B, H, length, D)).to(DEVICE, dtype)
    v = torch.randn(B, H, length, D).to(DEVICE, dtype)
    check_against_reference(q, k, v, None, scale=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("length", [40, 16])
def test_very_large_scores_stay_finite(dtype, length):
    # Scores about 90,000 (q and k aligned, scale 1): legal fp16 inputs whose weights (w ~ s) exceed fp16's
    # largest value, 65504, so the weights cast for the second product must be scaled down first.
    torch.manual_seed(3)
    B, H, D = 1, 2, 32
    u = torch.nn.functional.normalize(torch.randn(D), dim=0)
    q, k = ((300.0 * u + torch.randn(B, H, length, D)).to(DEVICE, dtype) for _ in range(2))
    v = torch.randn(B, H, length, D).to(DEVICE, dtype)  # bf16 randn draws differ between torch releases
    check_against_reference(q, k, v, None, scale=1.0)


def low_rows(dtype, length, level, seed):
    """q, k, v (1, 2, length, 32) whose scores q . k (scale 1) all lie within a few units of ``level``."""
    torch.manual_seed(seed)
    B, H, D = 1, 2, 32
    u = torch.nn.functional.normalize(torch.randn(D), dim=0)
    k = u + 0.1 * torch.randn(B, H, length, D) / math.sqrt(D)
    q = level * u + 3.0 * torch.randn(B, H, length, D) / math.sqrt(D)
    v = torch.randn(B, H, length, D)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def softmax_of_scores(q, k, v):
    """The fp64 output of rows whose every score is below -100: there softplus(z) = e^z (1 - e^z / 2 + ...), so
    the l1-normalised softplus weights are softmax's to within e^-100. Independent of the shift under test."""
    q, k, v = q.double(), k.double(), v.double()
    scores = (q @ k.transpose(-2, -1)).masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), -math.inf)
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("level", [-300.0, -3000.0])  # below fp32's range (-104), and below fp64's (-745)
def test_reference_and_export_keep_rows_of_very_negative_scores(dtype, level):
    # Unshifted, every weight of these rows is 0 in fp32 (and at -3000 in fp64): an output of 0 / 0.
    q, k, v = low_rows(dtype, 37, level, seed=int(-level))
    expected = softmax_of_scores(q, k, v)
    # fp32 scores of size |level| are off by a few of their ulps (|level| 2^-24 each), an error the weights
    # e^s take on relatively; fp16/bf16 outputs add their own rounding. The reference computes fp64 inputs in
    # fp64 (no error worth the name), the export every input in fp32.
    tol = TOL.get(dtype, 0.0) + 8 * abs(level) * 2.0**-24
    assert rel_err(softplus_attention_reference(q, k, v, 1.0), expected) < (1e-12 if q.dtype == torch.float64 else tol)
    assert rel_err(split_cache_call(softplus_attention_export, q[..., 20:, :], k, v, 1.0), expected[..., 20:, :]) < tol
    first = first_key_weight(q, k, "softplus")  # the attention-sink analysis weighs rows the same way
    expected_first = first_key_weight(q.double(), k.double(), "softmax")  # its scores are divided by sqrt(D)
    assert torch.isfinite(first).all()
    if level == -300.0:  # -300 / sqrt(32) = -53: below the shift's -40, above fp32's underflow
        assert rel_err(first, expected_first) < 1e-4


@pytest.mark.parametrize("length", [40, 16])  # the tiled forward, and the split-K decode (q_len <= 16)
def test_kernel_forward_keeps_rows_of_very_negative_scores(length):
    q, k, v = low_rows(torch.float32, length, -300.0, seed=13)
    o, _ = kernels.forward(q, k, v, length_scale(length, length, None, DEVICE), 1.0)
    assert rel_err(o, softmax_of_scores(q, k, v)) < TOL[torch.float32] + 8 * 300.0 * 2.0**-24


def with_low_rows(shape, dtype, level, seed):
    """q, k, v of ``shape`` (B, H, Lq, Lk, D) and the mask ``low`` (B, H, Lq) of the query rows (every other row
    of the first head, all of the last) whose scores q . k / sqrt(D) all lie within about 40 of ``level``; the
    other rows' are O(1). Also the q whose low rows are drawn like the others."""
    torch.manual_seed(seed)
    B, H, q_len, kv_len, D = shape
    u = torch.nn.functional.normalize(torch.randn(D), dim=0)
    k = u + 0.3 * torch.randn(B, H, kv_len, D) / math.sqrt(D)
    v = torch.randn(B, H, kv_len, D)
    low = torch.zeros(B, H, q_len, dtype=torch.bool)
    low[:, 0, 1::2] = True
    low[:, -1] = True
    q_normal = torch.randn(B, H, q_len, D)
    q = torch.where(low[..., None], level * math.sqrt(D) * u + 3.0 * q_normal / math.sqrt(D), q_normal)
    return *(t.to(DEVICE, dtype) for t in (q, k, v, q_normal)), low.to(DEVICE)


def log_sum_of_weights(q, k, length_base, slopes):
    """fp64 log(sum_j softplus(z_ij)) per row, also where the sum is below fp64's range (z ~ -3000)."""
    z = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    z = score_mod.modified_scores(z, length_base, slopes)
    log_w = torch.where(z < -30, z, torch.nn.functional.softplus(z).log())  # softplus(z) = e^z (1 - e^z / 2...)
    return log_w.masked_fill(~causal_mask(*z.shape[-2:], z.device), -math.inf).logsumexp(dim=-1)


# (dtype, (B, H, Lq, Lk, D), length_base, ALiBi, level): scores below fp64's range too, the length scale and
# ALiBi, fp16 (weights rescaled for its range), q_len < kv_len, and a short query block (the decode forward,
# then the tiled backward).
LOW_ROW_CASES = [
    (torch.float32, (1, 2, 40, 40, 16), None, False, -3000.0),
    (torch.float32, (1, 2, 40, 40, 16), 64.0, True, -300.0),
    (torch.float16, (1, 2, 21, 40, 16), None, True, -300.0),
    (torch.float32, (1, 2, 5, 40, 16), 64.0, True, -300.0),
]


@pytest.mark.parametrize(("dtype", "shape", "length_base", "alibi", "level"), LOW_ROW_CASES,
                         ids=lambda x: str(x) if not isinstance(x, tuple) else "x".join(map(str, x)))
def test_kernels_shift_rows_of_very_negative_scores_among_normal_ones(dtype, shape, length_base, alibi, level):
    assert kernel_common.SHIFT_BELOW == SHIFT_BELOW  # the kernels shift the rows the reference shifts
    q, k, v, q_normal, low = with_low_rows(shape, dtype, level, seed=int(-level) + shape[2])
    slopes = steep_slopes(shape[1]) if alibi else None
    # Forward, dq, dk and dv against fp64, as elsewhere (dq from atomic adds in the ALiBi cases); the scores'
    # fp32 rounding (|level| 2^-24 each) is an error the weights e^z take on relatively.
    with kernels.use_atomic_dq(alibi):
        check_against_reference(q, k, v, length_base, tol=TOL[dtype] + 8 * abs(level) * 2.0**-24, slopes=slopes)

    # The other rows are computed as they are without the shifted ones: bitwise.
    o = softplus_attention_triton(q, k, v, length_base=length_base, alibi_slopes=slopes)
    o_normal = softplus_attention_triton(q_normal, k, v, length_base=length_base, alibi_slopes=slopes)
    assert torch.equal(o[~low], o_normal[~low])

    # What the backward reads from l: the sum of the weights, or below e^SHIFT_BELOW its log (negative).
    padded = [torch.nn.functional.pad(t, (0, 32 - shape[4])) for t in (q, k, v)]
    lam = length_scale(shape[2], shape[3], length_base, DEVICE)
    _, l = kernels.forward(*padded, lam, 1 / math.sqrt(shape[4]), slopes=slopes)
    log_sum = log_sum_of_weights(q, k, length_base, slopes)
    shifted, unshifted = log_sum < SHIFT_BELOW - 1, log_sum > SHIFT_BELOW + 1
    assert shifted.any() and unshifted.any() and bool((shifted | unshifted).all())
    assert (l[shifted] - log_sum[shifted]).abs().max() < TOL[dtype] + 8 * abs(level) * 2.0**-24
    assert rel_err(l[unshifted], log_sum[unshifted].exp()) < TOL[dtype]


def test_decode_kernel_with_rows_and_chunks_of_very_negative_scores():
    # The last 5 of 40 positions in chunks of 16 keys (three splits). Query rows 0, 2, 4 see only scores near
    # -300 (the combine shifts them); rows 1 and 3 see scores near -300 from every key of the first chunk and
    # O(10) ones from the others: a chunk whose weights all underflow in a row that does not.
    torch.manual_seed(14)
    B, H, q_len, kv_len, D = 1, 2, 5, 40, 32
    w, u = torch.linalg.qr(torch.randn(D, 2))[0].T  # orthonormal directions
    far = torch.where(torch.arange(kv_len) < 16, -1.0, 0.03 * torch.randn(kv_len))
    k = w + far[:, None] * u + 0.05 * torch.randn(B, H, kv_len, D)
    q = torch.where(torch.arange(q_len)[:, None] % 2 == 0, -300.0 * w, 300.0 * u) + 0.1 * torch.randn(B, H, q_len, D)
    v = torch.randn(B, H, kv_len, D)
    q, k, v = (t.to(DEVICE) for t in (q, k, v))
    slopes, lam = steep_slopes(H), length_scale(q_len, kv_len, 64.0, DEVICE)
    o, l = kernels.decode_forward(q, k, v, lam, 1.0, chunk=16, slopes=slopes)
    expected = softplus_attention_reference(q.double(), k.double(), v.double(), 1.0, 64.0, slopes)
    assert rel_err(o, expected) < TOL[torch.float32] + 8 * 300.0 * 2.0**-24
    assert (l[..., 0::2] < SHIFT_BELOW).all() and (l[..., 1::2] > 0).all()
    o_full, l_full = kernels.flash_forward(q, k, v, lam, 1.0, slopes=slopes)
    assert rel_err(o, o_full) < 1e-5
    torch.testing.assert_close(l, l_full, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_reference_gradient_in_rows_of_very_negative_scores(dtype):
    # The shift is a constant to autograd: the gradient is that of the softmax the rows reduce to.
    q, k, v = low_rows(dtype, 29, -200.0, seed=11)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    do = torch.randn(q.shape, dtype=torch.float64)
    softmax_of_scores(*leaves).backward(do)
    got = [t.detach().float().requires_grad_() for t in (q, k, v)]
    softplus_attention_reference(*got, 1.0).backward(do.float())
    for a, b in zip(got, leaves, strict=True):
        assert rel_err(a.grad, b.grad) < 1e-5 + 8 * 200.0 * 2.0**-24


@pytest.mark.parametrize("length_base", [None, 64.0])
def test_reference_rows_that_reach_the_shift_threshold_are_computed_as_before(length_base):
    # Scores of size ~1 to ~30: the shift subtracts an exact 0, so the reference is bitwise the unshifted formula.
    torch.manual_seed(12)
    q, k, v = make_qkv(2, 3, 33, 50, 32, torch.float32, q_scale=5.0)
    slopes = steep_slopes(3)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(32))  # the reference's default scale, as it applies it
    scores = score_mod.modified_scores(scores, length_base, slopes)
    weights = torch.nn.functional.softplus(scores) * causal_mask(33, 50)
    before = (weights @ v) / weights.sum(dim=-1, keepdim=True)
    assert torch.equal(softplus_attention_reference(q, k, v, None, length_base, slopes), before)


def test_first_query_with_length_scale_returns_first_value():
    # n = 1 key gives lam = log(1) = 0, so the one weight is softplus(0) and the output is v_0.
    torch.manual_seed(3)
    q, k, v = make_qkv(1, 2, 33, 33, 32, torch.float32)
    o = softplus_attention_triton(q, k, v, length_base=512.0)
    torch.testing.assert_close(o[:, :, 0], v[:, :, 0], rtol=1e-6, atol=1e-6)


def test_length_scale_values():
    lam = length_scale(3, 5, 4.0, dtype=torch.float64)
    n_keys = torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(lam, torch.log(n_keys) / math.log(4.0))
    assert torch.equal(length_scale(4, 4, None), torch.ones(4))
    with pytest.raises(ValueError, match="length_base"):
        length_scale(4, 4, 1.0)


def test_strided_inputs_like_the_model():
    # The model passes q, k, v as permuted views of one packed qkv projection.
    torch.manual_seed(4)
    B, L, H, D = 2, 70, 3, 32
    qkv = torch.randn(B, L, 3, H, D, device=DEVICE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    assert not q.is_contiguous()
    check_against_reference(q, k, v, 128.0)


def test_broadcast_output_gradient():
    # out.sum() hands back an expanded gradient whose strides are all zero.
    torch.manual_seed(11)
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 40, 40, 32, torch.float32))
    softplus_attention_triton(q, k, v).sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    softplus_attention_reference(q64, k64, v64).sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert rel_err(got, want) < TOL[torch.float32]


def test_output_layout_makes_head_merge_free():
    q, k, v = make_qkv(2, 3, 40, 40, 32, torch.float32)
    o = softplus_attention_triton(q, k, v)
    assert o.transpose(1, 2).is_contiguous()  # the model's (B, L, H * D) reshape is a view


@pytest.mark.parametrize("q_len", [1, 5, 16])
def test_decode_kernel_matches_full_kernel_last_rows(q_len):
    torch.manual_seed(5)
    q, k, v = make_qkv(2, 3, 100, 100, 64, torch.float32)
    lam = length_scale(100, 100, 256.0, DEVICE)
    o_full, l_full = kernels.flash_forward(q, k, v, lam, 0.125)
    # Chunks of 24 keys: five splits, the last one ragged, chunk ends inside key tiles, and the causal
    # edge inside the last chunk.
    o_dec, l_dec = kernels.decode_forward(q[:, :, -q_len:], k, v, lam[-q_len:], 0.125, chunk=24)
    assert rel_err(o_dec, o_full[:, :, -q_len:]) < 1e-6
    assert rel_err(l_dec, l_full[:, :, -q_len:]) < 1e-6


def test_decode_dispatch_matches_reference():
    torch.manual_seed(6)
    q, k, v = make_qkv(1, 4, 1, 300, 128, torch.float16)
    o, _ = kernels.forward(q, k, v, length_scale(1, 300, None, DEVICE), 1 / math.sqrt(128))
    assert rel_err(o, softplus_attention_reference(q.double(), k.double(), v.double())) < TOL[torch.float16]


@pytest.mark.parametrize("length_base", [None, 3.0])
def test_reference_gradcheck(length_base):
    torch.manual_seed(7)
    q, k, v = (torch.randn(1, 2, n, 4, dtype=torch.float64, requires_grad=True) for n in (5, 7, 7))

    def attention(q, k, v):
        return softplus_attention_reference(q, k, v, 0.7, length_base)

    assert torch.autograd.gradcheck(attention, (q, k, v))


@pytest.mark.parametrize("alibi", [False, True])
def test_opcheck(alibi):
    torch.manual_seed(8)
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 24, 40, 32, torch.float32))
    lam = length_scale(24, 40, 64.0, DEVICE)
    args = (q, k, v, lam, 0.2, steep_slopes(2)) if alibi else (q, k, v, lam, 0.2)
    torch.library.opcheck(softplus_attention_op, args)


def test_opcheck_of_the_backward_with_a_transposed_input():
    # The fake (meta) backward must report the strides the kernels return: a q whose last dimension is not
    # contiguous is copied to one that is, and its gradient comes back in that layout.
    torch.manual_seed(12)
    q = torch.randn(1, 2, 32, 24, device=DEVICE).transpose(-1, -2)
    k, v = (torch.randn(1, 2, 40, 32, device=DEVICE) for _ in range(2))
    lam = length_scale(24, 40, None, DEVICE)
    o, l = kernels.forward(q, k, v, lam, 0.2)
    args = (torch.randn_like(o), q, k, v, o, l, lam, 0.2, False)
    torch.library.opcheck(softplus_attention_backward_op, args)


def test_fp32_dot_precision_follows_either_torch_api():
    assert kernels._dot_precision(torch.float32) == "ieee"  # the default: exact fp32 products
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # the per-backend API; the legacy getter now raises
        assert kernels._dot_precision(torch.float32) == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision = "none"
    assert torch.get_float32_matmul_precision() == "highest"  # restored


def test_autotuning_trials_do_not_add_up_in_the_atomic_dq(monkeypatch):
    # On a GPU the autotuner runs the dK/dV kernel several times on the real arguments before the final run
    # (the interpreter keeps one config, so make it tune two here, each benchmark running the kernel 3 times).
    torch.manual_seed(13)
    q, k, v = make_qkv(1, 1, 40, 40, 32, torch.float32)
    lam = length_scale(40, 40, None, DEVICE)
    o, l = kernels.forward(q, k, v, lam, 0.2)
    do = torch.randn_like(o)
    dq, _, _ = kernels.backward(do, q, k, v, o, l, lam, 0.2, atomic_dq=False)

    tuner = kernels._bwd_dkdv_kernel
    runs = []

    def do_bench(kernel_call, quantiles):
        for _ in range(3):
            kernel_call()
            runs.append(1)
        return [1.0, 1.0, 1.0]

    monkeypatch.setattr(tuner, "configs", [triton.Config({"BLOCK_M": m, "BLOCK_N": 32}, num_warps=4, num_stages=1)
                                           for m in (16, 32)])
    monkeypatch.setattr(tuner, "early_config_prune", None)
    monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(tuner, "cache_results", False)  # Triton 3.5 would use the disk cache under the interpreter
    monkeypatch.setitem(tuner.__dict__, "do_bench", do_bench)
    dq_atomic, _, _ = kernels.backward(do, q, k, v, o, l, lam, 0.2, atomic_dq=True)
    assert len(runs) == 6  # it did tune: 2 configs x 3 runs, then the final run
    assert rel_err(dq_atomic, dq) < 1e-5


@pytest.mark.parametrize("alibi", [False, True])
def test_compiles_without_graph_breaks(alibi):
    torch.manual_seed(9)
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 40, 40, 32, torch.float32))
    slopes = steep_slopes(2) if alibi else None

    def loss(q, k, v):
        return softplus_attention_triton(q * 2, k, v, length_base=64.0, alibi_slopes=slopes).square().sum()

    # fullgraph: a graph break is an error. aot_eager runs the fake kernels and the autograd registration
    # (inductor also works on CPU but compiles C++ for ~15 s).
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    expected = torch.autograd.grad(loss(q, k, v), (q, k, v))
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_other_head_dims_are_padded():
    torch.manual_seed(10)
    check_against_reference(*make_qkv(1, 2, 40, 40, 48, torch.float32), 64.0)


@pytest.mark.parametrize(("device_type", "dtype", "head_dim", "fused"), [
    ("cuda", torch.bfloat16, 64, True), ("cuda", torch.float32, 48, True), ("cuda", torch.float16, 128, True),
    ("cuda", torch.float64, 64, False), ("cuda", torch.bfloat16, 160, False), ("cpu", torch.float32, 64, False),
])
def test_model_dispatch_sends_the_kernel_only_inputs_it_takes(device_type, dtype, head_dim, fused):
    # fp64 on a GPU (e.g. a double-precision gradcheck of the model) must reach the reference, not a ValueError.
    assert kernel_handles(device_type, dtype, head_dim) == fused


def test_rejects_unsupported_inputs():
    q, k, v = make_qkv(1, 1, 8, 8, 160, torch.float32)
    with pytest.raises(ValueError, match="head_dim"):
        softplus_attention_triton(q, k, v)
    q, k, v = make_qkv(1, 1, 9, 8, 32, torch.float32)
    with pytest.raises(ValueError, match="exceeds kv_len"):
        softplus_attention_triton(q, k, v)
    q, k, v = make_qkv(1, 1, 8, 8, 32, torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        softplus_attention_triton(q, k.half(), v)
    with pytest.raises(ValueError, match="slopes"):
        softplus_attention_triton(q, k, v, alibi_slopes=steep_slopes(2))  # one head
    lam = length_scale(8, 8, None, DEVICE)
    with pytest.raises(ValueError, match="slopes must be float32"):
        kernels.forward(q, k, v, lam, 0.2, slopes=steep_slopes(1).double())
    with pytest.raises(ValueError, match="slopes must be on"):
        kernels.forward(q, k, v, lam, 0.2, slopes=torch.ones(1, device="meta"))


def test_kernel_outputs_start_as_nan_in_these_tests():
    q = torch.zeros(1, 2, 3, 32, device=DEVICE)
    o, l = kernels.forward_output_like(q)
    assert o.isnan().all() and l.isnan().all()


@triton.jit
def _log2_1p_kernel(Y, OUT, N, dtype: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    y = tl.load(Y + offs, mask=offs < N)
    tl.store(OUT + offs, kernel_common._log2_1p(y, dtype), mask=offs < N)


@pytest.mark.parametrize(("dtype", "bound"), [(tl.float32, 1.5e-6), (tl.float16, 6e-5), (tl.bfloat16, 4e-4)],
                         ids=str)
def test_log2_1p_polynomial_keeps_relative_accuracy(dtype, bound):
    # Uniform points on [0, 1] and log-spaced ones down to the smallest normal float (very negative scores).
    y = torch.cat([torch.rand(200_000, generator=torch.Generator().manual_seed(0)), torch.logspace(-37.9, 0, 20_000)])
    y = torch.cat([y, torch.tensor([0.0, 1.0])]).float().to(DEVICE)
    out = torch.empty_like(y)
    _log2_1p_kernel[(triton.cdiv(y.numel(), 4096),)](y, out, y.numel(), dtype=dtype, BLOCK=4096)
    y, out = y.cpu(), out.cpu()
    exact = torch.log1p(y.double()) / math.log(2)
    assert out[-2] == 0.0  # y = 0: t = +-inf, softplus(t) = max(t, 0) exactly
    rel = ((out.double() - exact).abs() / exact.clamp_min(1e-300))[:-2]
    assert rel.max() < bound, rel.max()


@pytest.mark.parametrize(("kernel", "score_rows"), [("_fwd_kernel", "BLOCK_M"), ("_bwd_dkdv_kernel", "BLOCK_N"),
                                                   ("_bwd_dq_kernel", "BLOCK_M")])
def test_autotuner_skips_configs_that_compute_each_score_twice(kernel, score_rows):
    # Compiled for sm_80 or sm_90, a score tile with fewer than 16 rows per warp (64 rows on 8 warps) has
    # every score computed by two warps (bench/kernel_sass.py --all_configs: 2 exp2 per score).
    tiles = kernel_common._tiles((64, 64), (64, 128), (128, 64))  # (the interpreter's own list has one config)
    configs = [triton.Config(t, num_warps=w, num_stages=2) for t in tiles for w in (4, 8)]
    prune = getattr(kernels, kernel).early_config_prune
    kept = prune(configs, {"Q": torch.empty(0, dtype=torch.bfloat16)}, HEAD_DIM=64, DOT_PRECISION="tf32")
    assert [(c.kwargs, c.num_warps) for c in configs if c not in kept] == [
        (t, 8) for t in tiles if t[score_rows] == 64
    ]


@pytest.mark.parametrize("kernel", ["_fwd_kernel", "_decode_partial_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"])
def test_autotuned_configs_are_not_shared_across_head_dims_dot_precisions_or_alibi(kernel):
    # Otherwise a config tuned for TF32 dots would be reused for exact fp32 ones (FMA loops, which want smaller
    # tiles), one tuned for head_dim 64 for 128, and one tuned without ALiBi for the kernel with its bias.
    # (Triton adds the tensors' dtypes to the key by itself.)
    assert {"HEAD_DIM", "DOT_PRECISION", "ALIBI"} <= set(getattr(kernels, kernel).keys)


@pytest.mark.parametrize(("setting", "fwd_configs"), [("1", 16), ("0", 1)])
def test_autotuning_can_be_switched_off_for_gpu_tests(setting, fwd_configs):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"SOFTPLUS_AUTOTUNE": setting}
    script = "from gpt2.attention import softplus_triton as k; print(len(k._fwd_kernel.configs))"
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == fwd_configs


def test_kernels_compile_for_hopper_with_one_special_function_op_per_score(tmp_path):
    # The interpreter runs the kernels' logic but not Triton's GPU compiler, which has rules of its own
    # (e.g. no non-constexpr globals). bench/kernel_sass.py compiles every kernel for an H100 (sm_90, no GPU
    # needed) with bf16 inputs and counts the machine instructions in each loop over key or query tiles.
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SOFTPLUS_AUTOTUNE")}
    command = [sys.executable, "-m", "bench.kernel_sass", "--head_dims", "64", "128", "--config_index", "0", "-1",
               "--out_dir", str(tmp_path)]
    done = subprocess.run(command, cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "kernel_sass.json").read_text())["rows"]
    # The first and the last config of each kernel: 4 warps and 8 warps (decode: 4 and 4).
    assert len(rows) == 20
    first = {(r["kernel"], r["head_dim"]): r for r in reversed(rows)}
    assert set(first) == {(name, d) for name in ("fwd", "dkdv", "dkdv_atomic", "dq", "decode") for d in (64, 128)}
    # (The opt-in atomic-dQ variant holds one more product's result: at head_dim 128 it spills a little.)
    spills = [(r["kernel"], r["head_dim"]) for r in first.values() if r["stack"]]
    assert spills in ([], [("dkdv_atomic", 128)]), f"the first configs spill registers: {spills}"
    # Per score: one exp2 on the special-function unit, plus one reciprocal where the backward needs the
    # logistic function; log2 is a polynomial on the FMA pipe, and no division range checks are left.
    rcp = {"fwd": 0.0, "decode": 0.0, "dkdv": 1.0, "dkdv_atomic": 1.0, "dq": 1.0}
    for r in rows:
        name = f"{r['kernel']} D={r['head_dim']} {r['block_m']}x{r['block_n']} {r['warps']} warps"
        assert r["loops"], f"{name}: no loop found"
        for loop in r["loops"].values():
            assert (loop["ex2"], loop["lg2"], loop["rcp"]) == (1.0, 0.0, rcp[r["kernel"]]), name
            assert loop["opcodes"].get("FSETP.GT", 0) == 0, f"{name}: div.full range checks"  # |x| > 2^126
            assert any(op.startswith("LDGSTS") for op in loop["opcodes"]), f"{name}: loads not pipelined"
            reductions = any(op.startswith("REDG") for op in loop["opcodes"])
            assert reductions == (r["kernel"] == "dkdv_atomic"), f"{name}: atomic adds"


def test_alibi_kernels_compile_for_hopper_with_the_same_special_function_ops(tmp_path):
    # The interpreter accepts code the GPU compiler rejects (e.g. a constexpr branch's early return): compile the
    # ALIBI=True kernels too, and the rare path that shifts rows of very negative scores (with the bias, its
    # shift enters the scores another way). The bias adds FMA-pipe work only.
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SOFTPLUS_AUTOTUNE")}
    kernel_names = ["fwd", "dkdv", "dkdv_atomic", "dq", "decode", "rescue", "combine"]
    command = [sys.executable, "-m", "bench.kernel_sass", "--alibi", "--head_dims", "64", "--kernels", *kernel_names,
               "--out_dir", str(tmp_path)]
    done = subprocess.run(command, cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "kernel_sass.json").read_text())["rows"]
    assert sorted(r["kernel"] for r in rows) == sorted(kernel_names)
    assert all(r["alibi"] for r in rows)
    rcp = {"fwd": 0.0, "decode": 0.0, "dkdv": 1.0, "dkdv_atomic": 1.0, "dq": 1.0}
    for r in rows:
        if r["kernel"] in ("rescue", "combine"):  # a pass for the rows' largest score (no ex2), then the sums
            ex2 = [loop["ex2"] for loop in r["loops"].values()]
            assert 0.0 in ex2 and ex2[-1] == 1.0, (r["kernel"], ex2)
            continue
        for loop in r["loops"].values():
            assert (loop["ex2"], loop["lg2"], loop["rcp"]) == (1.0, 0.0, rcp[r["kernel"]]), r["kernel"]


def test_the_division_fallback_for_older_triton_compiles_to_the_same_approximate_division(tmp_path):
    # Triton before tl.fdiv(approx=...) (3.5, torch 2.9's) gets div.approx.f32 through inline PTX:
    # compiled here with that branch forced, the backward loops keep one reciprocal and no range checks.
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SOFTPLUS_AUTOTUNE")}
    script = (
        "import sys, triton.language as tl\n"
        "from gpt2.attention.softplus_kernels import common\n"
        "common._APPROX_FDIV = tl.constexpr(False)  # before any kernel compiles: _fast_div reads it then\n"
        "from bench import kernel_sass\n"
        f"kernel_sass.main(['--kernels', 'dkdv', 'dq', '--head_dims', '64', '--out_dir', {str(tmp_path)!r}])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "kernel_sass.json").read_text())["rows"]
    assert {r["kernel"] for r in rows} == {"dkdv", "dq"}
    for r in rows:
        for loop in r["loops"].values():
            assert (loop["ex2"], loop["rcp"]) == (1.0, 1.0), r["kernel"]
            assert loop["opcodes"].get("FSETP.GT", 0) == 0, f"{r['kernel']}: div.full range checks"

