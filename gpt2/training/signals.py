"""Graceful stop on SIGINT/SIGTERM (Ctrl-C, preemption): finish the step, checkpoint, exit 0."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """Catches SIGINT/SIGTERM while active and records them instead of dying mid-step.

    A second SIGINT while a stop is pending raises ``KeyboardInterrupt`` so a
    stuck run can still be killed by hand.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: stopping after this step and saving a checkpoint")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
