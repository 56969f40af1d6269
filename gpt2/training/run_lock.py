"""One trainer per run folder: an OS-level lock on ``RUN/.lock`` for the trainer's whole life.

Two trainers writing one folder overwrite each other's checkpoints and interleave ``metrics.jsonl``. The lock
is ``flock``: the kernel releases it when its holder ends in any way (SIGKILL, the out-of-memory killer), so
a dead run never leaves a stale lock, and it works across the nodes of a shared file system that supports it
(NFS; Lustre mounted with ``-o flock``). The file records its holder's host and PID, so that the second
trainer can name it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from gpt2.distributed import DistEnv, from_main
from gpt2.errors import UserError
from gpt2.io import check_output_dir

LOCK_FILE = ".lock"
_HOLDER_WAIT_S = 2.0  # a holder records itself just after locking: how long to wait for that record


class RunLock:
    """An exclusive lock on a run folder, held until :meth:`release` or the process ends."""

    def __init__(self, path: Path, fd: int | None, made_folder: bool = False) -> None:
        self.path = path
        self._fd = fd  # None: the file system cannot lock (warned), or released
        self.made_folder = made_folder  # the folder did not exist before this lock

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Lock ``run_dir`` (created if missing), or a one-line ``UserError`` naming the trainer that holds it."""
        made_folder = not check_output_dir(run_dir).exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        # Not O_TRUNC: the file may hold a live holder's record, which the message below reads.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return cls._unlocked(run_dir, e)
            raise UserError(
                f"{run_dir} is in use: another trainer ({_holder(path)}) holds its lock; wait for it to end or "
                "stop it, or choose another --out_dir"
            ) from None
        _record_holder(fd)
        return cls(path, fd, made_folder)

    @classmethod
    def _unlocked(cls, run_dir: Path, error: OSError) -> RunLock:
        """A file system without locks (ENOLCK, ENOSYS...) should not stop the run: it runs unguarded."""
        print(f"warning: cannot lock {run_dir} ({error.strerror}); nothing stops a second trainer from writing to it")
        return cls(run_dir / LOCK_FILE, None)

    def release(self) -> None:
        """Unlock (idempotent); the record is cleared first, so that it never names a process that let go."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # the folder may be gone; closing releases the lock regardless
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def abandon(self) -> None:
        """Release after a run that never started: a folder this lock made, holding nothing else, is removed,
        so that a refused run leaves nothing behind."""
        self.release()
        folder = self.path.parent
        if self.made_folder and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            self.path.unlink()
            folder.rmdir()


def lock_run_dir(run_dir: Path, env: DistEnv) -> RunLock | None:
    """Rank 0's lock on ``run_dir`` (None on the other ranks); when rank 0 cannot take it, every rank fails
    with its error, instead of the others waiting at their next collective."""
    lock, failure = None, None
    if env.is_main:
        try:
            lock = RunLock.acquire(run_dir)
        except Exception as e:  # whatever it is, the other ranks must hear of it
            failure = e
    problem = from_main(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if problem is not None:
        raise UserError(problem)
    return lock


def _record_holder(fd: int) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)  # other nodes of a network file system see it only once it is written back


def _holder(path: Path) -> str:
    """The lock holder as it recorded itself, e.g. "PID 123 on host node7, since 2025-01-01 12:00:00"."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(path.read_text())
            return f"PID {record['pid']} on host {record['host']}, since {record['since']}"
        if time.monotonic() > deadline:
            return "its host and PID not recorded"
        time.sleep(0.05)
