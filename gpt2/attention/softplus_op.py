"""The Triton softplus kernels as ``torch.library`` custom ops.

``gpt2::softplus_attention(q, k, v, lam, scale, alibi_slopes=None) -> (o, l)``
and its backward op both have fake (meta) implementations, and autograd is
registered on the forward, so ``torch.compile`` traces through them without
graph breaks and AOTAutograd can build the joint graph. ``l`` (fp32 row sums of
the weights, or the log of the sum for rows whose every score is very negative:
see ``softplus_triton``) is an output only because the backward needs it to
recompute the normalised weights; it is not differentiable. ``lam`` and the
ALiBi slopes get no gradient either: they are fixed functions of the positions
and heads, not parameters.
"""

from __future__ import annotations

import torch

from gpt2.attention import softplus_triton as kernels


@torch.library.custom_op("gpt2::softplus_attention", mutates_args=())
def softplus_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lam: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal softplus attention with per-query length scale ``lam`` (float32, (Lq,)) and optional ALiBi slopes
    (float32, (H,)); returns (o, l)."""
    return kernels.forward(q, k, v, lam, scale, slopes=alibi_slopes)


@softplus_attention_op.register_fake
def _(q, k, v, lam, scale, alibi_slopes=None):
    kernels.check_inputs(q, k, v, lam, alibi_slopes)
    return kernels.forward_output_like(q)


@torch.library.custom_op("gpt2::softplus_attention_backward", mutates_args=())
def softplus_attention_backward_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    l: torch.Tensor,
    lam: torch.Tensor,
    scale: float,
    atomic_dq: bool,
    alibi_slopes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of ``softplus_attention_op`` given the output gradient ``do``."""
    return kernels.backward(do, q, k, v, o, l, lam, scale, atomic_dq, slopes=alibi_slopes)


@softplus_attention_backward_op.register_fake
def _(do, q, k, v, o, l, lam, scale, atomic_dq, alibi_slopes=None):
    # The layouts the kernels return: like the input once its last dimension has unit stride.
    return tuple(torch.empty_like(kernels._unit_stride_last(t)) for t in (q, k, v))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, lam, scale, alibi_slopes = inputs
    o, l = output
    ctx.save_for_backward(q, k, v, o, l, lam, alibi_slopes)
    ctx.scale = scale
    # The dQ variant in effect when the forward ran (or was traced) is the one its backward uses.
    ctx.atomic_dq = kernels.atomic_dq_enabled()
    ctx.mark_non_differentiable(l)


def _backward(ctx, do, _dl):
    q, k, v, o, l, lam, alibi_slopes = ctx.saved_tensors
    dq, dk, dv = softplus_attention_backward_op(do, q, k, v, o, l, lam, ctx.scale, ctx.atomic_dq, alibi_slopes)
    return dq, dk, dv, None, None, None


softplus_attention_op.register_autograd(_backward, setup_context=_setup_context)
