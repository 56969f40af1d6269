"""Crash-safe file writing: write to a temporary name, fsync, rename.

A reader never sees a half-written file: after a crash (or a full disk) the
destination holds either its old content or nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gpt2.errors import UserError


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's content to disk (e.g. one written by a library that takes a file name)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (the rename itself) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_dir(out_dir: Path, name: str) -> Iterator[Path]:
    """A new folder ``out_dir/<name>.tmp-HOST-PID`` to build outputs in that are moved into ``out_dir`` once complete.

    It is removed on the way out, whatever happened, and so is ``out_dir`` if this created it and nothing was
    moved in: a failed or interrupted run leaves ``out_dir`` as it found it. Such folders that a killed run left
    (SIGKILL, power loss: no clean-up ran) are removed first (see :func:`remove_stale_staging`).
    """
    created = not out_dir.exists()
    remove_stale_staging(out_dir, name)
    staging = out_dir / f"{_staging_prefix(name)}{os.getpid()}"
    try:
        staging.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot create {staging}: {e.strerror}") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):  # rmdir fails on a folder that got the outputs: kept
                out_dir.rmdir()


def _staging_prefix(name: str) -> str:
    # The host is in the name: a PID says whether its run is alive only on the host that ran it (out_dir may
    # be on a file system that several machines share).
    return f"{name}.tmp-{socket.gethostname()}-"


def remove_stale_staging(out_dir: Path, name: str) -> None:
    """Remove the staging folders in ``out_dir`` of ``name`` runs on this host whose process is gone.

    Only folders named exactly like :func:`staging_dir`'s are candidates (never a folder of the user's), and
    only those whose PID runs no process: a live one may be a concurrent run. A PID that a new process has
    taken since is seen as alive, so its folder is kept: left over, never a live run's deleted.
    """
    if not out_dir.is_dir():
        return
    pattern = re.compile(re.escape(_staging_prefix(name)) + r"([1-9][0-9]*)")
    for entry in sorted(out_dir.iterdir()):
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(match[1])
        # A folder named with this process's PID is a killed run's that had it (PIDs repeat in containers).
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                print(f"removed {entry}: left by a run that was killed (process {pid} is gone)")


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a number no PID reaches: left alone
        return True
    return True


def check_new_dir(
    path: str | os.PathLike, what: str, replaceable: str | None = None, overwrite: bool = False
) -> Path:
    """``path`` if it is a folder that may be written as a whole: absent or empty; else a one-line ``UserError``
    (the folder holds something else, which is not merged with). ``replaceable`` names a file whose presence
    marks the folder as an earlier output of the same kind, which ``overwrite`` (``--overwrite``) replaces."""
    path = Path(path)
    check_output_dir(path, what)
    if not path.is_dir() or not any(path.iterdir()):
        return path
    names = sorted(p.name for p in path.iterdir())
    if overwrite and replaceable in names:
        return path
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    hint = ""
    if replaceable in names:
        hint = " (or --overwrite to replace an earlier one)"
    elif overwrite:
        hint = f" (--overwrite replaces only an earlier one, a folder with a {replaceable})"
    raise UserError(f"{what} {path} is not empty (it holds {shown}); give a new or empty folder{hint}")


@contextlib.contextmanager
def building_dir(out: Path, replace: bool = False) -> Iterator[Path]:
    """A staging folder beside ``out`` to build a whole output folder in; on success it is renamed to ``out``
    (absent or empty, or, with ``replace``, an earlier output, removed once the new one is in place). On error
    nothing is left: neither the staging folder nor a half-written ``out``."""
    with staging_dir(out.parent, out.name) as staging:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                fsync_file(file)
        old = out.with_name(f"{staging.name}.old")
        if replace and out.is_dir() and any(out.iterdir()):
            os.replace(out, old)
        try:  # rename(2) replaces an empty folder
            os.replace(staging, out)
        except BaseException:
            if old.exists():
                os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
        fsync_dir(out.parent)


def check_output_path(path: str | os.PathLike, flag: str = "--output") -> Path:
    """``path`` if a file can be written there, else a clear ``UserError`` now, before the work whose result it
    is to hold (not a bare OS error once it is done, its result lost)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{flag} {path}: the folder {folder} {problem}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: the folder {folder} is not writable")
    return path


def check_output_dir(path: str | os.PathLike, flag: str = "--out_dir") -> Path:
    """``path`` if it is a folder or one can be made there, else a clear ``UserError`` now (not an OS error at the
    first write)."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing == path and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; give a folder (new, or one of an earlier run)")
    if existing is not None and not existing.is_dir():
        raise UserError(f"{flag} {path} cannot be made: {existing} is a file, not a folder")
    return path


def file_problem(path: Path) -> str | None:
    """None if ``path`` is a (readable) file; else what it is instead, to complete "<what> <path> ...": "does not
    exist", "is a folder, not a file"..."""
    if path.is_file():
        return None
    if path.is_dir():
        return "is a folder, not a file"
    if path.exists():
        return "is not a regular file"
    return "does not exist"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``path.tmp`` to write to (for writers that take a file name); on success fsync it and rename
    it to ``path``, on error delete it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        # The cleanup must not replace the error that got here (e.g. with EROFS on a folder gone read-only,
        # or EISDIR where a folder sits at the temporary name): that one says what went wrong.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open ``path.tmp`` for writing; on success fsync and rename it to ``path``, on error delete it."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
