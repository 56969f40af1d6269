"""A pool of worker processes whose results come back in input order, with bounded memory.

Used by ``prepare``: the output must not depend on the number of workers, so results are consumed in the order
of their inputs, and the reader never runs far ahead of the workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cpus() -> int:
    """Cores this process may run on (respects taskset / container cpusets, unlike ``os.cpu_count``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which terminates the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate's SIGTERM ends a worker, whatever it inherited


def worker_pool(workers: int) -> contextlib.AbstractContextManager[multiprocessing.pool.Pool | None]:
    """A pool of ``workers`` processes, or None for 1 (all in this process). Start it before any thread
    (tqdm's monitor), since forking a process that has threads can deadlock the children."""
    if workers == 1:
        return contextlib.nullcontext()
    return multiprocessing.get_context().Pool(workers, initializer=_init_worker)


def map_in_order(
    pool: multiprocessing.pool.Pool | None, fn: Callable[[T], R], items: Iterable[T], max_in_flight: int
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in input order, on the pool's processes (here without one).

    Unlike ``Pool.imap``, which drains its input as fast as it can, at most ``max_in_flight`` items are
    sent ahead, so the parent never reads its input far ahead of the workers (memory stays bounded), and
    an error reading the input is raised here, in the parent, when it happens.
    """
    if pool is None:
        for item in items:
            yield item, fn(item)
        return
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.apply_async(fn, (item,))))
        if len(pending) >= max_in_flight:
            item, result = pending.popleft()
            yield item, result.get()
    while pending:
        item, result = pending.popleft()
        yield item, result.get()
