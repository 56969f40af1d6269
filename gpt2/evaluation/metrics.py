"""Loss, perplexity and bits per byte over eval batches, and the loss by position in the window.

Bits per byte divides the summed loss (in bits) by the number of UTF-8 bytes
the predicted tokens stand for, so it compares models with different
tokenizers. ``<|endoftext|>`` stands for no bytes, but predicting it still
costs loss: the end of a document is information too.

The loss by position (1-based: position ``t`` is predicted from ``t`` tokens of context) is reported in
buckets 1-64, 65-128, 129-256, ...: how much a model gains from a longer context, and, evaluated past its
training length, whether it still gains or breaks down.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed
import torch.nn.functional as F
from tqdm import tqdm

from gpt2.data.loader import IGNORE_INDEX

FIRST_BUCKET = 64  # positions 1-64, then 65-128, 129-256...: each bucket twice as long as the one before


@dataclass
class PositionLoss:
    """The mean loss of the targets at positions ``first..last`` (1-based: the first target of a window, predicted
    from one token of context, is at position 1)."""

    first: int
    last: int
    loss: float  # nats per predicted token
    tokens: int


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per predicted token, nats
    perplexity: float
    bits_per_byte: float
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes those tokens stand for
    batches: int
    seconds: float
    position_loss: list[PositionLoss] = field(default_factory=list)  # by position in the window, see buckets

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def coverage(tokens: int, batches: int, eval_set_tokens: int, seq_len: int) -> str:
    """Which part of an eval set of ``eval_set_tokens`` tokens an evaluation scored ``tokens`` targets of: a
    loss over the first batches (the trainer's --eval_batches) differs from one over the whole set."""
    targets = eval_set_tokens - 1  # every token but the first is a target, once
    if tokens >= targets:
        return f"the whole eval set: {tokens:,} tokens in {batches} batches of seq_len {seq_len}"
    return f"the first {batches} batches of seq_len {seq_len}: {tokens:,} of the eval set's {targets:,} tokens"


def position_buckets(length: int, first_size: int = FIRST_BUCKET) -> list[tuple[int, int]]:
    """``(first, last)`` 1-based position ranges 1-64, 65-128, 129-256, ..., the last one cut at ``length``."""
    buckets, first, last = [], 1, first_size
    while first <= length:
        buckets.append((first, min(last, length)))
        first, last = last + 1, 2 * last
    return buckets


def bucket_position_loss(nll: np.ndarray, tokens: np.ndarray) -> list[PositionLoss]:
    """Per-position sums (index 0: position 1) in :func:`position_buckets`, up to the last scored position."""
    scored = np.flatnonzero(tokens)
    length = int(scored[-1]) + 1 if len(scored) else 0
    result = []
    for first, last in position_buckets(length):
        n = int(tokens[first - 1 : last].sum())
        if n:  # eval_batches fills windows from their start; other batches may leave a bucket unscored
            result.append(PositionLoss(first, last, float(nll[first - 1 : last].sum() / n), n))
    return result


def _grow(t: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(t, (0, length - len(t))) if length > len(t) else t


@torch.no_grad()
def evaluate_loss(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: np.ndarray,
    device: torch.device | str = "cpu",
    progress: bool = False,
    total: int | None = None,
    all_reduce: bool = False,
) -> EvalResult:
    """Sum the loss of ``logits_fn`` over ``batches`` of ``(input, target)``; targets of -100 are ignored.

    The loss is also summed per position in the window (float64 vectors as long as the longest batch), which
    :func:`bucket_position_loss` reports by length of context. With ``all_reduce`` (under torch.distributed)
    each rank passes its share of the batches and the sums are combined over ranks.
    """
    byte_table = torch.as_tensor(token_bytes, dtype=torch.float64, device=device)
    position_nll = torch.zeros(0, dtype=torch.float64, device=device)
    position_tokens = torch.zeros(0, dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.float64, device=device)
    n_batches = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    for inputs, targets in tqdm(batches, total=total, desc="eval", disable=not progress, leave=False):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = logits_fn(inputs)
        flat_targets = targets.reshape(-1)
        # Ignored targets cost 0: summing over the batch rows gives each position's loss sum directly.
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), flat_targets, ignore_index=IGNORE_INDEX, reduction="none"
        ).view(targets.shape)
        valid = targets != IGNORE_INDEX
        length = targets.shape[1]
        position_nll, position_tokens = _grow(position_nll, length), _grow(position_tokens, length)
        position_nll[:length] += nll.sum(0, dtype=torch.float64)
        position_tokens[:length] += valid.sum(0, dtype=torch.float64)
        n_bytes += byte_table[targets[valid]].sum()
        n_batches += valid.any()  # a batch with no target (a rank's padding under FSDP) is not one
    if all_reduce:
        # The ranks' vectors must be equally long to be summed: pad each to the longest.
        length = torch.tensor(len(position_nll), device=device)
        torch.distributed.all_reduce(length, op=torch.distributed.ReduceOp.MAX)
        position_nll, position_tokens = (_grow(t, int(length)) for t in (position_nll, position_tokens))
        sums = torch.cat([position_nll, position_tokens, torch.stack([n_bytes, n_batches])])
        torch.distributed.all_reduce(sums)
        position_nll, position_tokens, (n_bytes, n_batches) = sums.split([len(position_nll)] * 2 + [2])
    position_nll_np, position_tokens_np = position_nll.cpu().numpy(), position_tokens.cpu().numpy()
    total_nll, tokens = float(position_nll_np.sum()), int(position_tokens_np.sum())
    nbytes, n_batches = int(n_bytes), int(n_batches)
    if tokens == 0:
        raise ValueError("no eval tokens: the eval set is shorter than one sequence")
    loss = total_nll / tokens
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=total_nll / (math.log(2) * nbytes) if nbytes else float("nan"),
        tokens=tokens,
        bytes=nbytes,
        batches=n_batches,
        seconds=time.perf_counter() - start,
        position_loss=bucket_position_loss(position_nll_np, position_tokens_np),
    )


def unigram_baseline(train_tokens: np.ndarray, targets: np.ndarray, vocab_size: int, chunk: int = 1 << 26) -> float:
    """Mean loss (nats/token) on ``targets`` of a unigram model fit on the train tokens, add-one smoothed.

    The floor any language model must beat: it knows token frequencies and nothing else. ``targets`` are
    the tokens the model was scored on (all eval tokens but the first, or a prefix of them).
    """
    if len(targets) == 0:
        raise ValueError("no targets to compute the unigram baseline on")
    counts = np.ones(vocab_size, dtype=np.float64)
    for start in range(0, len(train_tokens), chunk):  # chunked: token files can be larger than memory
        counts += np.bincount(train_tokens[start : start + chunk], minlength=vocab_size)
    log_probs = np.log(counts / counts.sum())
    total = sum(log_probs[targets[start : start + chunk]].sum() for start in range(0, len(targets), chunk))
    return float(-total / len(targets))
