"""SIGINT/SIGTERM in the data commands: they stop at once, clean up, and say so in one line.

Training has its own handling (``gpt2.training.signals``: finish the step, save a checkpoint). The data
commands write their outputs under temporary names and rename them at the end, so stopping them at any
moment before that loses nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped a command; the CLI prints the message and exits with 128 + the signal number.

    A BaseException like KeyboardInterrupt, so that no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"interrupted by {name}: {self.args[0]}" if self.args[0] else f"interrupted by {name}"


@contextlib.contextmanager
def _handlers(handler: Callable | int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def raise_on_signals(message: str) -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM raise ``Interrupted(message)`` in the main thread, so that cleanups (``finally``,
    ``with``) run; without this, SIGTERM would end the process on the spot."""

    def handle(signum: int, frame: object) -> None:
        raise Interrupted(signum, message)

    return _handlers(handle)


def ignore_signals() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM are ignored: around a few renames that must not be cut in half."""
    return _handlers(signal.SIG_IGN)


@contextlib.contextmanager
def exit_on_signals(message: str) -> Iterator[None]:
    """SIGINT and SIGTERM print ``interrupted by SIG...: message`` and end the process at once.

    For native code that keeps the main thread busy (Hugging Face's BPE training): Python runs its signal
    handlers only between bytecodes of the main thread, so a Ctrl-C would wait for the native call to
    return. Here the C-level handler writes the signal number to a pipe (``signal.set_wakeup_fd``) and a
    thread waiting on the pipe exits the process. Only around code that writes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def watch() -> None:
        received = os.read(read_fd, 1)
        if received:
            signum = received[0]
            sys.stderr.write(f"\n{Interrupted(signum, message)}\n")
            sys.stderr.flush()
            os._exit(128 + signum)

    watcher = threading.Thread(target=watch, name="exit_on_signals", daemon=True)
    watcher.start()
    previous_fd = signal.set_wakeup_fd(write_fd)
    try:
        with _handlers(lambda signum, frame: None):  # a Python handler, so that the C handler writes the pipe
            yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the watcher reads end-of-file and returns (or exits for a signal already sent)
        watcher.join()
        os.close(read_fd)
