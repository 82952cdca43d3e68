"""Work directories: one process at a time, clear errors for unusable ones; atomic writes."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from eos_jax import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = """
import sys, time
from eos_jax import results
results.prepare_workdir(sys.argv[1], {"a": 1}, {})
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_process_is_refused_until_the_holder_dies(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, workdir], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(results.WorkdirError, match="in use by another process") as err:
            results.prepare_workdir(workdir, {"a": 1}, {})
        assert workdir in str(err.value) and f"pid {holder.pid}" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    results.prepare_workdir(workdir, {"a": 1}, {})
    results.prepare_workdir(workdir, {"a": 1}, {})  # the same process may resume
    results.finish(workdir, {})  # releases the lock
    take = "import sys; from eos_jax import results; results.lock_workdir(sys.argv[1])"
    assert subprocess.run([sys.executable, "-c", take, workdir], cwd=ROOT).returncode == 0


def test_a_deleted_and_remade_workdir_is_locked_again(tmp_path):
    workdir = str(tmp_path / "run")
    results.prepare_workdir(workdir, {"a": 1}, {})
    os.remove(os.path.join(workdir, results.LOCK))
    results.prepare_workdir(workdir, {"a": 1}, {})
    assert os.path.exists(os.path.join(workdir, results.LOCK))
    results.unlock_workdir(workdir)


def test_a_file_or_unwritable_path_is_a_one_line_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(results.WorkdirError, match="is not a directory"):
        results.prepare_workdir(str(a_file), {}, {})
    with pytest.raises(results.WorkdirError, match="cannot write to workdir") as err:
        results.prepare_workdir(str(a_file / "run"), {}, {})
    assert str(a_file / "run") in str(err.value) and "\n" not in str(err.value)


def test_atomic_writes_leave_the_whole_file_or_none(tmp_path, monkeypatch):
    path = str(tmp_path / "sub" / "a.npz")
    results.write_npz(path, {"x": np.arange(3)})
    np.testing.assert_array_equal(np.load(path)["x"], np.arange(3))
    assert os.stat(path).st_mode & 0o777 == 0o644
    results.atomic_write_text(str(tmp_path / "t.txt"), "one\n")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        results.write_npz(path, {"x": np.arange(4)})
    np.testing.assert_array_equal(np.load(path)["x"], np.arange(3))  # the old file, whole
    assert sorted(os.listdir(tmp_path)) == ["sub", "t.txt"]
    assert os.listdir(tmp_path / "sub") == ["a.npz"]  # no temporary file left behind


def test_a_ctrl_c_during_an_atomic_write_waits_for_it(tmp_path, monkeypatch):
    """The Ctrl-C comes inside the write (here from the writer itself); the file is written
    whole, no temporary file stays, and the KeyboardInterrupt follows."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a main
    path = str(tmp_path / "a.npz")
    save = np.savez

    def interrupted(f, **arrays):
        os.kill(os.getpid(), signal.SIGINT)
        save(f, **arrays)

    monkeypatch.setattr(np, "savez", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            results.write_npz(path, {"x": np.arange(3)})
    finally:
        signal.signal(signal.SIGINT, previous)
    np.testing.assert_array_equal(np.load(path)["x"], np.arange(3))
    assert os.listdir(tmp_path) == ["a.npz"]
