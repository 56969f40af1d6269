"""The attention-sink share (Gu et al. 2024, "When Attention Sink Emerges in Language Models").

For every (layer, head), the mean attention weight that queries put on the first token of their window,
over all queries of a few eval batches; the share is the fraction of (layer, head) pairs whose mean exceeds
a threshold (0.3 in the paper). Softmax models grow sinks; whether l1-normalised softplus does is one of the
questions this repo asks.

The weights are recomputed from each layer's q and k (:meth:`CausalSelfAttention.project`, read by a
forward pre-hook) with the same score modifications and causal mask as the kernels, so the fused kernels
never have to return their weights. Rows of queries are processed in chunks: the full ``T x T`` weights of
a long window would not fit in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gpt2.attention.mask import causal_mask
from gpt2.attention.score_mod import modified_scores
from gpt2.attention.softplus import shift_low_rows
from gpt2.data.loader import IGNORE_INDEX
from gpt2.errors import UserError
from gpt2.model import GPT

SINK_THRESHOLD = 0.3  # Gu et al.'s epsilon
_CHUNK_SCORES = 1 << 24  # scores materialised at once (64 MiB in fp32)


def _softplus_weights(scores: torch.Tensor) -> torch.Tensor:
    weights = F.softplus(shift_low_rows(scores))  # masked scores are -inf: weight 0
    return weights / weights.sum(dim=-1, keepdim=True)


# How each attention kind turns a row of modified, masked scores into weights (see gpt2.attention).
WEIGHTINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda scores: torch.softmax(scores, dim=-1),
    "softmax_naive": lambda scores: torch.softmax(scores, dim=-1),
    "softplus": _softplus_weights,
}


@dataclass
class AttentionSinks:
    share: float  # fraction of (layer, head) pairs whose first_token_weight exceeds threshold
    threshold: float
    first_token_weight: list[list[float]]  # [layer][head]: mean weight of the queries on the window's first token
    queries: int  # queries averaged over, per (layer, head)


def first_key_weight(
    q: torch.Tensor,
    k: torch.Tensor,
    attention: str,
    length_base: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weight each query of ``q (B, H, T, D)`` puts on the first of the keys ``k (B, H, T, D)`` (causal, no
    cache), ``(B, H, T)`` in fp32 (fp64 for fp64 inputs), as attention kind ``attention`` weighs the scores."""
    if attention not in WEIGHTINGS:
        raise UserError(f"the attention-sink analysis does not know how {attention} attention weighs its scores")
    weigh = WEIGHTINGS[attention]
    B, H, T, D = q.shape
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k = q.to(dtype), k.to(dtype)
    rows = max(1, _CHUNK_SCORES // (B * H * T))
    out = []
    for first in range(0, T, rows):
        last = min(T, first + rows)
        # Queries first..last-1 see keys 0..last-1: the last (last - first) of last positions, as score_mod and
        # the mask align them.
        scores = (q[:, :, first:last] @ k[:, :, :last].transpose(-2, -1)) / math.sqrt(D)
        scores = modified_scores(scores, length_base, alibi_slopes)
        scores = scores.masked_fill(~causal_mask(last - first, last, q.device), float("-inf"))
        out.append(weigh(scores)[..., 0])
    return torch.cat(out, dim=-1)


@torch.no_grad()
def attention_sinks(
    model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], threshold: float = SINK_THRESHOLD
) -> AttentionSinks:
    """Mean first-token weight per (layer, head) over the queries of ``batches`` whose target is scored (the
    padding of a short last window is not), and the share of pairs above ``threshold``."""
    cfg = model.cfg
    device = model.lm_head.weight.device
    sums = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64, device=device)
    scored: list[torch.Tensor] = []  # the current batch's mask of scored queries, (B, T)

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0]
        positions = kwargs.get("positions", args[2] if len(args) > 2 else None)
        q, k, _, slopes = module.project(x, positions)
        weights = first_key_weight(q, k, cfg.attention, cfg.length_base, slopes)
        sums[module.layer] += (weights * scored[0][:, None, :]).sum(dim=(0, 2), dtype=torch.float64)

    handles = [block.attn.register_forward_pre_hook(hook, with_kwargs=True) for block in model.blocks]
    queries = 0
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            scored[:] = [targets != IGNORE_INDEX]
            queries += int(scored[0].sum())
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    if queries == 0:
        raise ValueError("no scored queries for the attention-sink analysis")
    means = sums / queries
    return AttentionSinks(
        share=float((means > threshold).double().mean()),
        threshold=threshold,
        first_token_weight=means.tolist(),
        queries=queries,
    )
