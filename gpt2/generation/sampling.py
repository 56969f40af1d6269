"""Choosing the next token: temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gpt2.errors import UserError


@dataclass
class SamplingConfig:
    temperature: float = field(default=0.8, metadata={"help": "softmax temperature (0: greedy)"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens (0: all)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus: smallest set of tokens with this mass (1: all)"})

    def __post_init__(self) -> None:
        # Written so that NaN fails too (every comparison with NaN is false): it would reach torch.multinomial.
        if not 0 <= self.temperature < math.inf:
            raise UserError(f"temperature must be a finite number >= 0 (0: greedy), got {self.temperature}")
        if not self.top_k >= 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / top-p set to -inf (rows of ``(B, V)`` logits)."""
    if top_k and top_k < logits.shape[-1]:
        # By index, not by value: with ties at the k-th logit, comparing values would keep more than k.
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, torch.topk(logits, top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the most likely token always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids ``(B,)`` from last-position logits ``(B, V)``."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
