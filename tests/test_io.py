"""Crash-safe writes (gpt2.io): the error that stopped a write is the one that reaches the user."""

import pytest

from gpt2.io import atomic_path, atomic_write


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
