"""Latency and throughput of inference backends on identical inputs.

For each backend: prefill of ``(batch, seq_len)`` tokens into an empty cache (latency
percentiles, sequences/s and tokens/s), and decode: one token per step against a cache
of ``seq_len - decode_steps`` and more positions (per-token latency). Generating without
a cache costs one full-sequence forward per token, which is what prefill measures, so
``decode_speedup = prefill p50 / decode p50`` is what the cache buys per token. With
``cache_lengths``, decode is also timed from each of those cache lengths (the cache filled
untimed by prefills of at most ``seq_len`` tokens): how the per-token cost grows with the
context. Warm-up calls are not timed; CUDA devices are synchronised around every timed call.
A backend that fails (say, torch.compile without a compiler) is reported as "failed: reason"
and the others still run.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from gpt2.inference import InferenceBackend


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    n: int

    @classmethod
    def from_seconds(cls, seconds: list[float]) -> LatencyStats:
        ms = np.asarray(seconds) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.mean()), len(ms))


@dataclass
class BenchmarkResult:
    backend: str
    status: str  # "ok", "failed: ...", "skipped: ..."
    batch_size: int
    seq_len: int
    prefill: LatencyStats | None = None
    sequences_per_s: float | None = None
    tokens_per_s: float | None = None
    decode: LatencyStats | None = None  # per token (one step of the whole batch)
    decode_context: int | None = None
    decode_speedup: float | None = None
    decode_by_cache: dict[int, LatencyStats] | None = None  # per token, from each of --cache_lengths

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[Any], Any], setup: Callable[[], Any], device: torch.device, warmup: int, iters: int
) -> list[float]:
    """Seconds of each of ``iters`` calls ``fn(setup())`` after ``warmup`` untimed ones (setup untimed)."""
    times = []
    for i in range(warmup + iters):
        arg = setup()
        _synchronize(device)
        start = time.perf_counter()
        fn(arg)
        _synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def fill_chunks(length: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the prefills that fill a cache of ``length`` positions, ``chunk`` tokens at most each."""
    return [(start, min(length, start + chunk)) for start in range(0, length, chunk)]


def decode_calls(batch: int, seq_len: int, cache_length: int, steps: int) -> set[tuple[int, int, int]]:
    """Every ``(batch, query_len, cache_len)`` call of a decode timed from ``cache_length`` (and its fill)."""
    fill = {(batch, end - start, start) for start, end in fill_chunks(cache_length, seq_len)}
    return fill | {(batch, 1, pos) for pos in range(cache_length, cache_length + steps)}


def benchmark_backend(
    name: str,
    make_backend: Callable[[], InferenceBackend],
    tokens: torch.Tensor,
    warmup: int = 2,
    iters: int = 10,
    decode_steps: int = 32,
    cache_lengths: Sequence[int] = (),
    seq_len: int | None = None,
) -> BenchmarkResult:
    """Prefill and decode timings of one backend on ``tokens (batch, >= seq_len)`` (``seq_len``: all of them).

    Decode runs from ``seq_len - decode_steps`` cached positions and from each of ``cache_lengths``; the
    tokens must cover ``max(cache_lengths) + decode_steps`` positions.
    """
    batch = tokens.shape[0]
    seq_len = seq_len or tokens.shape[1]
    result = BenchmarkResult(name, "ok", batch, seq_len)
    backend = None
    try:
        backend = make_backend()
        device = backend.device
        inputs = tokens.to(device)

        prefill = time_calls(
            lambda state: backend.forward(inputs[:, :seq_len], state),
            lambda: backend.new_state(batch, seq_len),  # a fresh cache each call, allocated untimed
            device,
            warmup,
            iters,
        )
        result.prefill = LatencyStats.from_seconds(prefill)
        result.sequences_per_s = batch * len(prefill) / sum(prefill)
        result.tokens_per_s = result.sequences_per_s * seq_len

        def decode_pass(context: int, steps: int) -> list[float]:
            state = backend.new_state(batch, context + steps)
            for start, end in fill_chunks(context, seq_len):
                backend.forward(inputs[:, start:end], state)
            positions = iter(range(context, context + steps))

            def step(pos: int) -> None:
                backend.forward(inputs[:, pos : pos + 1], state)

            return time_calls(step, lambda: next(positions), device, 0, steps)

        def timed_decode(context: int, steps: int) -> LatencyStats:
            if warmup:
                # A whole untimed pass over the same shapes: torch.compile recompiles as the cache grows
                # (dynamic lengths, and once more when the last step fills the cache).
                decode_pass(context, steps)
            return LatencyStats.from_seconds(decode_pass(context, steps))

        steps = min(decode_steps, seq_len - 1)
        result.decode_context = seq_len - steps
        result.decode = timed_decode(result.decode_context, steps)
        result.decode_speedup = result.prefill.p50_ms / result.decode.p50_ms
        if cache_lengths:
            result.decode_by_cache = {length: timed_decode(length, decode_steps) for length in cache_lengths}
    except Exception as e:  # one backend failing must not stop the others
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result.status = f"failed: {type(e).__name__}: {message[:200]}"
    finally:
        backend = None  # free its memory before the next backend loads
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: list[BenchmarkResult]) -> str:
    """A plain-text table of benchmark results (failed/skipped rows show the reason)."""
    header = (
        f"{'backend':<22} {'prefill ms p50/p90/p99':>24} {'seq/s':>9} {'tok/s':>10} "
        f"{'decode ms/token p50/p90/p99':>28} {'cache speedup':>13}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.status != "ok":
            lines.append(f"{r.backend:<22} {r.status}")
            continue
        p, d = r.prefill, r.decode
        prefill = f"{p.p50_ms:.1f}/{p.p90_ms:.1f}/{p.p99_ms:.1f}"
        decode = f"{d.p50_ms:.2f}/{d.p90_ms:.2f}/{d.p99_ms:.2f}"
        throughput = f"{_fmt(r.sequences_per_s, '.1f'):>9} {_fmt(r.tokens_per_s, ',.0f'):>10}"
        speedup = _fmt(r.decode_speedup, ".1f") + "x"
        lines.append(f"{r.backend:<22} {prefill:>24} {throughput} {decode:>28} {speedup:>13}")
    return "\n".join(lines)


def format_cache_table(results: list[BenchmarkResult]) -> str:
    """Per-token decode latency, p50 (p90) ms, of every backend from each cache length; "" if none measured."""
    lengths = sorted({n for r in results if r.decode_by_cache for n in r.decode_by_cache})
    if not lengths:
        return ""
    header = f"{'decode ms/token p50 (p90)':<26}" + "".join(f"{f'cache {n}':>18}" for n in lengths)
    lines = [header, "-" * len(header)]
    for r in results:
        by_cache = r.decode_by_cache or {}
        cells = [
            f"{by_cache[n].p50_ms:.2f} ({by_cache[n].p90_ms:.2f})" if n in by_cache else "-"
            for n in lengths
        ]
        lines.append(f"{r.backend:<26}" + "".join(f"{cell:>18}" for cell in cells))
    return "\n".join(lines)
