"""The command line's last line of defence: failures of the machine or of a given path, and Ctrl-C, end in one
``error:`` line and an exit status, not in a traceback."""

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2.cli import main as cli

REPO = Path(__file__).parents[1]


def prepare_sample(out_dir: Path, **popen_kwargs) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gpt2", "prepare", "--dump", "sample", "--out_dir", str(out_dir), "--workers", "1"]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen_kwargs)


@pytest.mark.e2e
def test_a_full_disk_is_one_error_line(tmp_path):
    def limit_file_size():  # in the child: a file past 64 KB fails to grow, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    _, stderr = prepare_sample(tmp_path / "wiki", preexec_fn=limit_file_size).communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "error: File too large (writing an output: is the disk full?)", stderr


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    # A command without signal handling of its own (evaluate, generate, deploy...) gets a real SIGINT.
    import gpt2.commands.evaluate

    monkeypatch.setattr(gpt2.commands.evaluate, "run", lambda args: signal.raise_signal(signal.SIGINT))
    assert cli(["evaluate", "runs/x"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted by SIGINT"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("entry_point", "status", "stderr"),
    [("lambda: 3", 3, ""), ("lambda: 1 / 0", 1, "ZeroDivisionError: division by zero")],
)
def test_a_torchrun_worker_exits_with_its_status_after_the_exit_handlers(entry_point, status, stderr):
    # A process that joined a process group ends with os._exit (gloo's threads must not meet the interpreter's
    # teardown): its exit handlers still run, buffered output is flushed, and an exception is printed, status 1.
    code = (
        "import atexit, gpt2.training.parallel as parallel\n"
        "from gpt2.cli import exit_process\n"
        "parallel.joined_process_group = True\n"
        "atexit.register(print, 'exit handler ran')\n"
        "print('buffered', end='')\n"
        f"exit_process({entry_point})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == status
    assert done.stdout == "bufferedexit handler ran\n"
    assert stderr in done.stderr and ("Traceback" in done.stderr) == bool(stderr)
