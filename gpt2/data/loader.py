"""Batches from memory-mapped token files.

Training order is a pure function of ``(seed, step, micro_step, rank, world_size)``:
no loader state to checkpoint, and resuming at step ``k`` replays exactly the
batches an uninterrupted run would have seen.

Each epoch cuts the token stream into windows of ``seq_len + 1`` tokens with
stride ``seq_len`` (consecutive windows share one token, so every token is a
target once per epoch), starting at an offset in ``[0, seq_len)`` and visited
in an order, both drawn from ``np.random.default_rng([seed, epoch])``. Samples
are numbered globally: optimizer step ``s`` consumes samples
``[s * G, (s + 1) * G)`` with ``G = batch_size * accum_steps * world_size``,
and (micro-step ``m``, rank ``r``) takes the ``batch_size`` samples starting at
``s * G + (m * world_size + r) * batch_size``. A step therefore sees the same
samples whether they are spread over ranks or over accumulation steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from gpt2.data.tokens import TokenFile
from gpt2.errors import UserError

IGNORE_INDEX = -100  # cross_entropy's default ignore_index: padded targets of the last eval window


def _to_tensors(
    inputs: np.ndarray, targets: np.ndarray, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 tensors on ``device``; to CUDA through pinned memory, asynchronously."""
    pair = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in (inputs, targets)]
    if device is None:
        return pair[0], pair[1]
    non_blocking = torch.device(device).type == "cuda"
    if non_blocking:
        pair = [t.pin_memory() for t in pair]
    return pair[0].to(device, non_blocking=non_blocking), pair[1].to(device, non_blocking=non_blocking)


def check_token_ids(tokens: np.ndarray, token_file: TokenFile, offsets: np.ndarray | int) -> None:
    """A clear error for an id outside the file's vocabulary (a corrupt payload, or another tokenizer's ids
    under an intact header) before it reaches the embedding: an IndexError on the CPU, a device-side assert
    on a GPU. ``offsets``: the file position of each element of ``tokens``, or of the first of contiguous
    ``tokens``. One max per batch: cheap."""
    vocab_size = token_file.header.vocab_size
    if tokens.size and int(tokens.max()) >= vocab_size:
        first = int(np.flatnonzero(tokens.reshape(-1) >= vocab_size)[0])
        position = offsets + first if isinstance(offsets, int) else int(offsets.reshape(-1)[first])
        raise UserError(
            f"token file {token_file.path} holds token id {int(tokens.reshape(-1)[first])} at token "
            f"{position:,}, outside its vocabulary of {vocab_size}: it is corrupt or was "
            "written with another tokenizer; re-run encode"
        )


class TrainBatches:
    """Random training windows, addressed by (step, micro_step) for this rank."""

    def __init__(
        self,
        token_file: TokenFile,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accum_steps: int = 1,
    ) -> None:
        if seq_len < 1 or batch_size < 1 or accum_steps < 1 or world_size < 1:
            raise ValueError("seq_len, batch_size, accum_steps and world_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if seed < 0:
            raise UserError(f"the data order seed must be >= 0, got {seed}")
        n = len(token_file)
        if n < seq_len + 1:
            raise UserError(
                f"token file {token_file.path} has {n:,} tokens, fewer than one training window of "
                f"seq_len + 1 = {seq_len + 1}; use more data or a shorter --seq_len"
            )
        self.token_file, self.tokens = token_file, token_file.tokens
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size, self.accum_steps = rank, world_size, accum_steps
        # The offset range shrinks for files shorter than two windows, so that every epoch has >= 1 window;
        # every epoch has the same number of windows (the one an offset may leave room for is dropped).
        self.max_offset = min(seq_len, n - seq_len)
        self.windows_per_epoch = (n - self.max_offset) // seq_len
        self._cached_epoch: tuple[int, int, np.ndarray] | None = None  # (epoch, offset, permutation)

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step, over all ranks and micro-steps."""
        return self.batch_size * self.accum_steps * self.world_size

    def _epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        """(offset, window permutation) of an epoch; the current one is cached."""
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(self.max_offset))
            self._cached_epoch = (epoch, offset, rng.permutation(self.windows_per_epoch))
        return self._cached_epoch[1], self._cached_epoch[2]

    def sample_starts(self, step: int, micro_step: int) -> np.ndarray:
        """Token offsets of the windows this rank gets at (step, micro_step)."""
        if not 0 <= micro_step < self.accum_steps:
            raise ValueError(f"micro_step {micro_step} is outside [0, {self.accum_steps})")
        first = step * self.global_batch + (micro_step * self.world_size + self.rank) * self.batch_size
        samples = np.arange(first, first + self.batch_size, dtype=np.int64)
        epochs, positions = np.divmod(samples, self.windows_per_epoch)
        starts = np.empty_like(samples)
        for epoch in np.unique(
            epochs
        ):  # a batch spans several epochs only near a boundary (or on tiny files)
            offset, order = self._epoch(int(epoch))
            mine = epochs == epoch
            starts[mine] = offset + order[positions[mine]] * self.seq_len
        return starts

    def get(
        self, step: int, micro_step: int = 0, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input, target)``, each ``(batch_size, seq_len)`` int64; target is input shifted by one token."""
        starts = self.sample_starts(step, micro_step)
        positions = starts[:, None] + np.arange(self.seq_len + 1)
        windows = self.tokens[positions]
        check_token_ids(windows, self.token_file, positions)
        return _to_tensors(windows[:, :-1], windows[:, 1:], device)


def _eval_windows(token_file: TokenFile, seq_len: int) -> int:
    """Number of eval windows: consecutive, non-overlapping targets covering tokens[1:]."""
    n = len(token_file)
    if n < 2:
        raise UserError(
            f"eval token file {token_file.path} has {n} tokens; at least 2 are needed for one target"
        )
    return math.ceil((n - 1) / seq_len)


def count_eval_batches(
    token_file: TokenFile, seq_len: int, batch_size: int, max_batches: int | None = None
) -> int:
    """How many batches ``eval_batches`` yields with the same arguments."""
    n_batches = math.ceil(_eval_windows(token_file, seq_len) / batch_size)
    return n_batches if max_batches is None else min(n_batches, max_batches)


def eval_batches(
    token_file: TokenFile,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential eval batches from the start of the file; ``max_batches=None``: the whole file exactly once.

    Every token after the first is a target exactly once. The last window may be short: its input is padded
    with token 0 and its target with -100 (ignored by the loss); the last batch may have fewer rows.
    """
    tokens = token_file.tokens
    n_windows = _eval_windows(token_file, seq_len)
    for b in range(count_eval_batches(token_file, seq_len, batch_size, max_batches)):
        rows = min(batch_size, n_windows - b * batch_size)
        start = b * batch_size * seq_len
        inputs = np.zeros(rows * seq_len, dtype=np.int64)
        targets = np.full(rows * seq_len, IGNORE_INDEX, dtype=np.int64)
        chunk = tokens[start : start + 1 + rows * seq_len]
        check_token_ids(chunk, token_file, start)
        x, y = chunk[: rows * seq_len], chunk[1:]
        inputs[: len(x)] = x
        targets[: len(y)] = y
        yield _to_tensors(inputs.reshape(rows, seq_len), targets.reshape(rows, seq_len), device)
