"""Sliding-window evaluation of token streams: every target scored once, with the context a window gives it.

A stream of ``n`` tokens has ``n - 1`` targets (token ``j`` is predicted from tokens ``0..j-1``). Windows of
``seq_len`` input tokens start every ``stride`` tokens; a window scores only the targets no earlier window
scored, the last ``stride`` of its ``seq_len`` (the first window scores all of them). So each target but those
of the first window is predicted from at least ``seq_len - stride`` tokens of context, carried over from the
windows before: the evaluation of the GPT-2 paper's WikiText numbers and of Hugging Face's perplexity guide.
``stride == seq_len`` gives consecutive windows that share nothing, as :func:`gpt2.data.loader.eval_batches`
cuts an eval set. The last window ends at the stream's end and may be shorter than ``seq_len``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch

from gpt2.data.loader import IGNORE_INDEX
from gpt2.errors import UserError


class Window(NamedTuple):
    """Inputs ``stream[begin:end]`` predict targets ``stream[begin + 1 : end + 1]``; those from index
    ``scored_from`` on (a stream index, of the target) are scored."""

    begin: int
    end: int
    scored_from: int


def check_stride(stride: int, seq_len: int) -> None:
    if not 1 <= stride <= seq_len:
        raise UserError(
            f"--stride {stride} must be between 1 and --seq_len {seq_len}: a longer stride would skip targets"
        )


def count_windows(n_tokens: int, seq_len: int, stride: int) -> int:
    """How many windows :func:`sliding_windows` gives a stream of ``n_tokens`` tokens."""
    check_stride(stride, seq_len)
    n_targets = n_tokens - 1
    return 0 if n_targets < 1 else 1 + max(0, math.ceil((n_targets - seq_len) / stride))


def sliding_windows(n_tokens: int, seq_len: int, stride: int) -> Iterator[Window]:
    """The windows of a stream of ``n_tokens`` tokens, in order (none for fewer than 2: no target)."""
    n_targets = n_tokens - 1
    for w in range(count_windows(n_tokens, seq_len, stride)):
        begin = w * stride
        scored_from = 1 if w == 0 else begin - stride + seq_len + 1  # past the previous window's last target
        yield Window(begin, min(begin + seq_len, n_targets), scored_from)


def window_batches(
    streams: Iterable[np.ndarray], seq_len: int, stride: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(input, target)`` int64 batches of up to ``batch_size`` windows of ``streams`` in order, as long as their
    longest window; unscored targets and the padding of shorter windows are ``IGNORE_INDEX`` (inputs: 0)."""
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for stream in streams:
        for begin, end, scored_from in sliding_windows(len(stream), seq_len, stride):
            inputs = np.asarray(stream[begin:end], dtype=np.int64)
            targets = np.array(stream[begin + 1 : end + 1], dtype=np.int64)  # a copy: the stream stays whole
            targets[: scored_from - begin - 1] = IGNORE_INDEX
            rows.append((inputs, targets))
            if len(rows) == batch_size:
                yield _stack(rows)
                rows = []
    if rows:
        yield _stack(rows)


def _stack(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(inputs) for inputs, _ in rows)
    inputs = np.zeros((len(rows), length), dtype=np.int64)
    targets = np.full((len(rows), length), IGNORE_INDEX, dtype=np.int64)
    for i, (x, y) in enumerate(rows):
        inputs[i, : len(x)] = x
        targets[i, : len(y)] = y
    return torch.from_numpy(inputs), torch.from_numpy(targets)
