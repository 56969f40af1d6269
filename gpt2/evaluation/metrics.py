"""Loss, perplexity and bits per byte over eval batches.

Bits per byte divides the summed loss (in bits) by the number of UTF-8 bytes
the predicted tokens stand for, so it compares models with different
tokenizers. ``<|endoftext|>`` stands for no bytes, but predicting it still
costs loss: the end of a document is information too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed
import torch.nn.functional as F
from tqdm import tqdm

from gpt2.data.loader import IGNORE_INDEX


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per predicted token, nats
    perplexity: float
    bits_per_byte: float
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes those tokens stand for
    batches: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


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

    With ``all_reduce`` (under torch.distributed) each rank passes its share of the batches and the sums
    are combined over ranks.
    """
    byte_table = torch.as_tensor(token_bytes, dtype=torch.float64, device=device)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    n_tokens = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.float64, device=device)
    n_batches = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    for inputs, targets in tqdm(batches, total=total, desc="eval", disable=not progress, leave=False):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = logits_fn(inputs)
        flat_targets = targets.reshape(-1)
        nll += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), flat_targets, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        valid = flat_targets != IGNORE_INDEX
        n_tokens += valid.sum()
        n_bytes += byte_table[flat_targets[valid]].sum()
        n_batches += valid.any()  # a batch with no target (a rank's padding under FSDP) is not one
    sums = torch.stack([nll, n_tokens, n_bytes, n_batches])
    if all_reduce:
        torch.distributed.all_reduce(sums)
    total_nll, tokens, nbytes, n_batches = sums.tolist()
    tokens, nbytes, n_batches = int(tokens), int(nbytes), int(n_batches)
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
