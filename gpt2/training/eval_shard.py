"""Evaluation during training: each rank's share of the eval batches, and what an evaluation scored."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from gpt2.data.loader import IGNORE_INDEX, count_eval_batches, eval_batches
from gpt2.data.tokens import TokenFile
from gpt2.distributed import DistEnv
from gpt2.evaluation import EvalResult
from gpt2.evaluation.metrics import coverage

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def rank_eval_batches(
    tokens: TokenFile, seq_len: int, batch_size: int, max_batches: int, env: DistEnv
) -> tuple[Batches, int]:
    """This rank's eval batches (of the first ``max_batches``; 0: all) and how many there are."""
    total = count_eval_batches(tokens, seq_len, batch_size, max_batches or None)
    batches = eval_batches(tokens, seq_len, batch_size, max_batches or None)
    if not env.distributed:
        return batches, total
    return rank_share(batches, total, env.rank, env.world_size), math.ceil(total / env.world_size)


def rank_share(batches: Batches, total: int, rank: int, world_size: int) -> Batches:
    """This rank's batches (every world_size-th), padded with fully ignored batches so all ranks run equally often.

    FSDP's forward is collective: a rank that ran out of batches would leave the others waiting.
    """
    mine = 0
    template = None
    for i, (inputs, targets) in enumerate(batches):
        template = inputs
        if i % world_size == rank:
            mine += 1
            yield inputs, targets
    for _ in range(math.ceil(total / world_size) - mine):
        yield torch.zeros_like(template[:1]), torch.full_like(template[:1], IGNORE_INDEX)


def scored(result: EvalResult, eval_tokens: int, seq_len: int) -> str:
    """What an evaluation scored: with --eval_batches, a prefix of the eval set, so its loss is not the
    whole-set number ``evaluate`` reports."""
    part = coverage(result.tokens, result.batches, eval_tokens, seq_len)
    if part.startswith("the whole"):
        return part
    return f"{part} (--eval_batches; `python -m gpt2 evaluate` scores the whole set)"
