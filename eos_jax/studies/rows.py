"""Typed table rows. A study's rows are frozen dataclasses that code reads by field (plots
included); `columns` flattens one for a CSV, where a field's column is named by its
metadata (`column("name")`) or else by the field, an Estimate becomes three columns (value,
'low', 'high'), a nested row is spliced in, and a field left None is left out unless it is
`kept` (a measurement that can come out as none: an empty CSV cell, 'None' in Markdown)."""

from __future__ import annotations

import dataclasses
from typing import Any

from eos_jax import results
from eos_jax.analysis import statistics


def column(name: str | None = None, default: Any = None, kept: bool = False):
    """A row field whose CSV column is `name` (e.g. 'final acc std'; None: the field's name),
    a column even where it is None if `kept`."""
    metadata = ({"column": name} if name else {}) | ({"kept": True} if kept else {})
    return dataclasses.field(default=default, metadata=metadata)


def columns(row) -> dict[str, Any]:
    """The row as {column: value} in field order (see the module docstring)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(row):
        value = getattr(row, field.name)
        name = field.metadata.get("column", field.name)
        if value is None:
            if field.metadata.get("kept"):
                out[name] = None
            continue
        if isinstance(value, statistics.Estimate):
            out |= {name: value.value, f"{name} low": value.low, f"{name} high": value.high}
        elif dataclasses.is_dataclass(value):
            out |= columns(value)
        else:
            out[name] = value
    return out


def write(workdir: str, name: str, rows, shown=None) -> str:
    """workdir/name.csv (every column of the typed rows) and name.md (`shown`, else the
    same columns); returns the Markdown table."""
    return results.write_table(workdir, name, [columns(r) for r in rows], shown)


def column_names(cls) -> dict[str, str]:
    """{field: its CSV column} of a row class."""
    return {f.name: f.metadata.get("column", f.name) for f in dataclasses.fields(cls)}
