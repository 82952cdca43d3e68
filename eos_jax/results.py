"""Results a person can read: one work directory per run, written so nothing is half-done.

Layout of a work directory::

    config.json        the run's config
    fingerprint.json   eos_jax.numerics.fingerprint(): what decided the bits
    metrics.jsonl      one JSON object per logged step (appended, flushed)
    summary.json       written last, atomically: its presence means "finished"
    lock               flock-ed by the process using the directory; holds its pid
    *.csv, *.md, *.png tables and figures
    checkpoints/       orbax checkpoints (training runs)
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import signal
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

SUMMARY = "summary.json"
LOCK = "lock"


# Fingerprint fields that decide a run's bits: a resumed run must match them.
BIT_DECIDING_FIELDS = (
    "backend",
    "device_kinds",
    "device_count",
    "mesh",
    "cpu",
    "cpu_threads",
    "xla_flags",
    "x64",
    "param_dtype",
    "compute_dtype",
    "matmul_precision",
    "prng_impl",
    "versions",
)
# Config fields a resumed run may change: what is printed, and the nested study's bases
# (each base's twins and each ensemble of seed members is a run of its own, the same
# whatever the other bases, so a design grows or shrinks in parts).
RESUME_FREE_FIELDS = ("quiet", "twins.bases")


class WorkdirError(RuntimeError):
    """The work directory cannot be used as asked (e.g. it holds a finished run)."""


def as_dict(config: Any) -> dict[str, Any]:
    """A plain dict of an ml_collections ConfigDict or a mapping."""
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (library errors can be pages long)."""
    text = str(error).strip()
    return text.splitlines()[0].split(" See full ")[0] if text else type(error).__name__


def _to_jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / jax scalars and arrays
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no nan/inf; keep them readable
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


@contextlib.contextmanager
def interrupt_deferred():
    """Holds a Ctrl-C (SIGINT) that arrives while the block runs until it has ended, then
    raises KeyboardInterrupt; a second Ctrl-C raises at once. Only in the main thread, and
    only where Python's own handler is installed."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received = []

    def hold(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def _replace_atomically(path: str, write) -> None:
    """write(file) into a temporary file beside `path` (a unique name: processes on several
    hosts may share the folder and even the pid), flushed to disk, then renamed to `path`,
    so that a reader sees all of it or nothing. A Ctrl-C waits for it (interrupt_deferred):
    one that came between the temporary file's creation and its removal left it behind."""
    with interrupt_deferred():
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str, text: str) -> None:
    """Writes text to path atomically (see _replace_atomically)."""
    _replace_atomically(path, lambda f: f.write(text.encode()))


def write_npz(path: str, arrays: dict[str, Any]) -> None:
    """np.savez to path atomically (see _replace_atomically), creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    _replace_atomically(path, lambda f: np.savez(f, **arrays))


def write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def shown_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[dict]:
    """The rows reduced to those of `columns` that some row has, in that order, a row's
    missing ones empty: a row with fewer (a diverged run's) takes no column from the others."""
    kept = [c for c in columns if any(c in row for row in rows)]
    return [{c: row.get(c, "") for c in kept} for row in rows]


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """One row per dict; columns are the union of keys in first-seen order."""
    columns = _columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _to_jsonable(v) for k, v in row.items()} for row in rows)
    atomic_write_text(path, buf.getvalue())


def markdown_table(rows: Sequence[dict[str, Any]], float_format: str = "{:.4g}") -> str:
    """A GitHub Markdown table of dict rows (floats formatted with float_format); columns are
    the union of keys in first-seen order, a row's missing ones empty."""
    if not rows:
        return ""
    columns = _columns(rows)

    def fmt(v):
        return float_format.format(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(
    workdir: str, name: str, rows: Sequence[dict[str, Any]], shown: Sequence[dict] | None = None
) -> str:
    """Writes every column of `rows` to workdir/name.csv and `shown` (default: the rows; a
    version for reading, e.g. fewer columns or intervals as text) to workdir/name.md, both
    atomically; returns the Markdown table."""
    write_csv(os.path.join(workdir, f"{name}.csv"), rows)
    table = markdown_table(rows if shown is None else shown)
    atomic_write_text(os.path.join(workdir, f"{name}.md"), table)
    return table


def _jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(_to_jsonable(record), sort_keys=True) + "\n"


def write_jsonl(path: str, records: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(_jsonl_line(r) for r in records))


class MetricsWriter:
    """Appends one JSON line per record to metrics.jsonl and flushes it at once."""

    def __init__(self, workdir: str, name: str = "metrics.jsonl"):
        self.path = os.path.join(workdir, name)
        self._file = open(self.path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(_jsonl_line(record))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn last line (a process killed mid-write) is dropped."""
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return records


def is_finished(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, SUMMARY))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = _to_jsonable(v)
    return out


def _changed_fields(old: dict[str, Any], new: dict[str, Any], ignore=()) -> list[str]:
    old, new = _flatten(_to_jsonable(old)), _flatten(_to_jsonable(new))
    keys = sorted(set(old) | set(new))
    return [k for k in keys if k not in ignore and old.get(k) != new.get(k)]


# Lock files this process holds open: real path of the work directory -> file descriptor.
_held_locks: dict[str, int] = {}


def check_workdir(workdir: str) -> None:
    """Refuses a workdir that is a file or lies under one (a WorkdirError), without writing:
    the mains call it before they load data or compile, so such a typo costs no wait."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir!r} is not a directory")
    existing = os.path.dirname(os.path.abspath(workdir))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise WorkdirError(f"cannot write to workdir {workdir!r}: Not a directory")


def lock_workdir(workdir: str) -> None:
    """Creates workdir and locks it for the rest of this process (or until finish()).

    Another process that holds the lock makes this a WorkdirError naming it; the same process
    may call this again (resume in-process). The lock is an flock on workdir/lock, so the
    operating system releases it when the holder dies, even when it is killed.
    """
    key, lock_path = os.path.realpath(workdir), os.path.join(workdir, LOCK)
    if key in _held_locks:
        if _same_file(_held_locks[key], lock_path):
            return
        os.close(_held_locks.pop(key))  # the directory was deleted and made again
    check_workdir(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkdirError(f"cannot write to workdir {workdir!r}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode().strip() or "unknown"
        os.close(fd)
        raise WorkdirError(
            f"workdir {workdir!r} is in use by another process (pid {holder}); "
            "wait for it to end or choose another --workdir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held_locks[key] = fd


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def unlock_workdir(workdir: str) -> None:
    """Releases this process's lock on workdir, if it holds one."""
    fd = _held_locks.pop(os.path.realpath(workdir), None)
    if fd is not None:
        os.close(fd)


def prepare_workdir(workdir: str, config: Any, fingerprint: dict[str, Any]) -> None:
    """Creates and locks workdir (lock_workdir) and writes config.json + fingerprint.json.

    A directory that already holds a finished run (summary.json) is never reused silently:
    that is an error naming the directory. An unfinished one is reused (resume) only with
    the same config (but RESUME_FREE_FIELDS) and the same bit-deciding numerics; otherwise
    resuming would mix runs. config.json is the config of the latest start.
    """
    if not workdir:
        raise WorkdirError("--workdir is required")
    lock_workdir(workdir)
    if is_finished(workdir):
        raise WorkdirError(
            f"workdir {workdir!r} already holds a finished run ({SUMMARY}); "
            "choose a new --workdir or delete it"
        )
    config_path = os.path.join(workdir, "config.json")
    fingerprint_path = os.path.join(workdir, "fingerprint.json")
    if os.path.exists(config_path):
        changed = _changed_fields(read_json(config_path), as_dict(config), RESUME_FREE_FIELDS)
        if changed:
            raise WorkdirError(
                f"workdir {workdir!r} holds an unfinished run of a different config "
                f"(changed: {', '.join(changed[:5])}); use a new --workdir to start afresh"
            )
    if os.path.exists(fingerprint_path):
        saved = read_json(fingerprint_path)
        changed = _changed_fields(
            {k: saved.get(k) for k in BIT_DECIDING_FIELDS},
            {k: fingerprint.get(k) for k in BIT_DECIDING_FIELDS},
        )
        if changed:
            raise WorkdirError(
                f"workdir {workdir!r} was started with other numerics (changed: "
                f"{', '.join(changed[:5])}); resuming would not be bit-exact"
            )
    try:
        write_json(config_path, as_dict(config))  # a resume may have changed a free field
        if not os.path.exists(fingerprint_path):
            write_json(fingerprint_path, fingerprint)
    except OSError as e:
        raise WorkdirError(f"cannot write to workdir {workdir!r}: {e.strerror or e}") from e


def finish(workdir: str, summary: dict[str, Any]) -> None:
    """Marks a run finished by writing summary.json last, and releases its lock."""
    write_json(os.path.join(workdir, SUMMARY), summary)
    unlock_workdir(workdir)
