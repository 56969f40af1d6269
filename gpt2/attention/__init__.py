"""Pluggable attention: one registry of kinds, selected by name.

Every kind is a function ``attn(q, k, v, scale=None, length_base=None, alibi_slopes=None) -> out`` on
``q (B, H, Lq, D)``, ``k, v (B, H, Lk, D)``, causal, with the queries being the last ``Lq`` of the ``Lk``
positions (so the same call serves training and KV-cache decoding). ``length_base`` and ``alibi_slopes``
modify the scores as :mod:`gpt2.attention.score_mod` defines. :data:`ATTENTION` is the only list of kinds:
the model, the flags, the ONNX exporter and the docs read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpt2.attention.softmax import softmax_attention, softmax_attention_export, softmax_naive_attention
from gpt2.attention.softplus import softplus_attention, softplus_attention_export
from gpt2.errors import UserError

AttentionFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AttentionSpec:
    name: str
    forward: AttentionFn  # training and inference: the fastest implementation for the tensors' device
    # The same math in plain PyTorch ops over a cache split into past and new keys, for the ONNX exporter:
    # export(q, k_past, v_past, k_new, v_new, mask, scale=None) with a split_cache.SplitCacheMask.
    export: AttentionFn
    summary: str
    options: frozenset[str] = frozenset({"length_base", "alibi"})  # score modifications it implements


ATTENTION: dict[str, AttentionSpec] = {
    spec.name: spec
    for spec in (
        AttentionSpec("softmax", softmax_attention, softmax_attention_export,
                      "softmax; PyTorch SDPA (FlashAttention on GPU), flex_attention for ALiBi on GPU"),
        AttentionSpec("softmax_naive", softmax_naive_attention, softmax_attention_export,
                      "softmax that materialises the L x L scores (the memory baseline)"),
        AttentionSpec("softplus", softplus_attention, softplus_attention_export,
                      "l1-normalised softplus; fused Triton kernels on GPU, linear memory in L"),
    )
}


def get_attention_spec(name: str) -> AttentionSpec:
    """The registered kind ``name``; a one-line error naming the kinds for any other."""
    try:
        return ATTENTION[name]
    except KeyError:
        raise UserError(f"unknown attention {name!r}; choose one of {', '.join(ATTENTION)}") from None


def get_attention(name: str) -> AttentionFn:
    """The forward function of the kind registered under ``name``."""
    return get_attention_spec(name).forward


__all__ = ["ATTENTION", "AttentionFn", "AttentionSpec", "get_attention", "get_attention_spec"]
