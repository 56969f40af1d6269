"""The training log: a ``train`` record in ``metrics.jsonl`` every ``--log_every`` steps, and the progress bar.

A record sums up the window of steps since the one before: the mean loss of the steps that updated the weights,
the throughput over training time only (evaluations and checkpoints inside the window do not count), MFU and
peak memory.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Iterator

import torch
from tqdm import tqdm

from gpt2.training.run_log import MetricsLog


class LogWindow:
    """Train statistics accumulated between two log records."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.paused_seconds = 0.0
        self.steps = self.skipped = 0
        self.loss_sum = 0.0
        self.last: dict[str, float] = {}

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in the block (evaluation, checkpoints) does not count as training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - start

    def seconds(self) -> float:
        """Training time since the window started."""
        return time.perf_counter() - self.start - self.paused_seconds

    def add(self, stats: dict[str, float]) -> None:
        self.steps += 1
        if stats["skipped"]:
            self.skipped += 1
        elif math.isfinite(stats["loss"]):
            self.loss_sum += stats["loss"]
        self.last = stats


class TrainLog:
    """The progress bar from ``step`` to ``max_steps``, and a train record of the window every ``log_every`` steps
    and at the last. ``tokens_per_step`` is over all ranks; MFU is left out without ``peak_flops`` (per device)."""

    def __init__(
        self,
        metrics: MetricsLog,
        step: int,
        max_steps: int,
        log_every: int,
        tokens_per_step: int,
        flops_per_token: float,
        peak_flops: float | None,
        world_size: int,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        self.metrics, self.max_steps, self.log_every = metrics, max_steps, log_every
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.world_size, self.device = peak_flops, world_size, device
        self.bar = tqdm(total=max_steps, initial=step, disable=not progress)
        self.window = LogWindow()

    def add(self, step: int, stats: dict[str, float]) -> None:
        """Count the step just taken (``step`` is its number from 1), writing the record when one is due."""
        self.window.add(stats)
        if step % self.log_every == 0 or step == self.max_steps:
            record = self.record(step)
            self.window = LogWindow()
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}"
            )
        self.bar.update(1)

    def record(self, step: int) -> dict[str, float]:
        """Write the window's train record to the metrics log; the record."""
        window = self.window
        tokens_per_s = window.steps * self.tokens_per_step / window.seconds()
        counted = window.steps - window.skipped
        record = {
            "loss": window.loss_sum / counted if counted else math.nan,  # written as null
            "lr": window.last["lr"],
            "grad_norm": window.last["grad_norm"],
            "tokens_per_s": tokens_per_s,
            "skipped_steps": window.skipped,
            "peak_memory_gb": peak_memory_gb(self.device),
        }
        if self.peak_flops:
            record["mfu"] = tokens_per_s * self.flops_per_token / (self.peak_flops * self.world_size)
        self.metrics.write("train", step, **record)
        return record

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """A block whose time does not count as training time (see :meth:`LogWindow.paused`)."""
        return self.window.paused()

    def write(self, line: str) -> None:
        """Print a line above the progress bar."""
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
