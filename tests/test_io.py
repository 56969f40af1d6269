"""Crash-safe writes (gpt2.io): the error that stopped a write is the one that reaches the user."""

import os
import socket
import subprocess
import sys

import pytest

from gpt2.io import atomic_path, atomic_write, staging_dir


def test_a_failing_cleanup_does_not_hide_the_error_that_stopped_the_write(tmp_path):
    # A folder sits at the temporary name (left by someone else): unlinking it fails (EISDIR), and that
    # failure must not replace the writer's own error, nor remove the folder.
    (tmp_path / "out.json.tmp").mkdir()
    with pytest.raises(RuntimeError, match="the writer failed") as error, atomic_path(tmp_path / "out.json"):
        raise RuntimeError("the writer failed")
    assert error.value.__context__ is None  # no second exception raised while handling it
    assert (tmp_path / "out.json.tmp").is_dir() and not (tmp_path / "out.json").exists()
    with pytest.raises(IsADirectoryError) as error, atomic_write(tmp_path / "out.json") as f:
        f.write("never reached")
    assert error.value.filename == str(tmp_path / "out.json.tmp") and error.value.__context__ is None


def test_a_successful_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    (tmp_path / "out.json").write_text("old")
    with atomic_write(tmp_path / "out.json") as f:
        f.write("new")
    assert (tmp_path / "out.json").read_text() == "new" and not (tmp_path / "out.json.tmp").exists()


def test_staging_folders_of_killed_runs_are_removed_and_those_of_live_processes_kept(tmp_path, capsys):
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: no process has its PID now (unless one took it since: then the folder is kept)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "corpus"
        stale, running = out / f"prepare.tmp-{host}-{dead.pid}", out / f"prepare.tmp-{host}-{live.pid}"
        other_host, other_name = out / f"prepare.tmp-elsewhere-{dead.pid}", out / f"encode.tmp-{host}-{dead.pid}"
        user = out / f"prepare.tmp-{host}-{dead.pid}-mine"  # the pattern and more: a folder of the user's
        for folder in (stale, running, other_host, other_name, user):
            (folder / "train").mkdir(parents=True)
            (folder / "train" / "train_00000.txt").write_text("a shard being written when the run was killed")
        with staging_dir(out, "prepare") as staging:
            assert staging.name == f"prepare.tmp-{host}-{os.getpid()}"
            assert sorted(p.name for p in out.iterdir()) == sorted(
                p.name for p in (staging, running, other_host, other_name, user)
            )
        removed = f"removed {stale}: left by a run that was killed (process {dead.pid} is gone)\n"
        assert capsys.readouterr().out == removed  # one line, for the one folder removed
        assert (running / "train" / "train_00000.txt").is_file()
    finally:
        live.kill()
        live.wait()


def test_a_staging_folder_named_with_this_process_pid_is_a_killed_runs(tmp_path, capsys):
    # In a container PIDs repeat: a run killed earlier may have had the PID this one has now.
    out = tmp_path / "corpus"
    leftover = out / f"encode.tmp-{socket.gethostname()}-{os.getpid()}"
    (leftover / "train.bin").parent.mkdir(parents=True)
    (leftover / "train.bin").write_bytes(b"half written")
    with staging_dir(out, "encode") as staging:
        assert staging == leftover and not any(staging.iterdir())
    removed = f"removed {leftover}: left by a run that was killed (process {os.getpid()} is gone)\n"
    assert capsys.readouterr().out == removed
