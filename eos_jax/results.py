"""Results a person can read: one work directory per run, written so nothing is half-done.

Layout of a work directory::

    config.json        the run's config
    fingerprint.json   eos_jax.numerics.fingerprint(): what decided the bits
    metrics.jsonl      one JSON object per logged step (appended, flushed)
    summary.json       written last, atomically: its presence means "finished"
    *.csv, *.md, *.png tables and figures
    checkpoints/       orbax checkpoints (training runs)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

SUMMARY = "summary.json"


class WorkdirError(RuntimeError):
    """The work directory cannot be used as asked (e.g. it holds a finished run)."""


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


def atomic_write_text(path: str, text: str) -> None:
    """Writes via a temporary file and a rename, so a reader sees all of it or nothing."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """One row per dict; columns are the union of keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _to_jsonable(v) for k, v in row.items()} for row in rows)
    atomic_write_text(path, buf.getvalue())


def markdown_table(rows: Sequence[dict[str, Any]], float_format: str = "{:.4g}") -> str:
    """A GitHub Markdown table of dict rows (floats formatted with float_format)."""
    if not rows:
        return ""
    columns = list(rows[0])

    def fmt(v):
        return float_format.format(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


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
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def is_finished(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, SUMMARY))


def prepare_workdir(workdir: str, config: Any, fingerprint: dict[str, Any]) -> None:
    """Creates workdir and writes config.json + fingerprint.json.

    A directory that already holds a finished run (summary.json) is never reused silently:
    that is an error naming the directory. An unfinished one is reused (resume).
    """
    if not workdir:
        raise WorkdirError("--workdir is required")
    if is_finished(workdir):
        raise WorkdirError(
            f"workdir {workdir!r} already holds a finished run ({SUMMARY}); "
            "choose a new --workdir or delete it"
        )
    os.makedirs(workdir, exist_ok=True)
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    write_json(os.path.join(workdir, "config.json"), as_dict)
    write_json(os.path.join(workdir, "fingerprint.json"), fingerprint)


def finish(workdir: str, summary: dict[str, Any]) -> None:
    """Marks a run finished by writing summary.json last."""
    write_json(os.path.join(workdir, SUMMARY), summary)
