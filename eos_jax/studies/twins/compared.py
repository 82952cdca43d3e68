"""The compared-sources studies: every source alone (sources), the verdict's two sources at
each learning rate (sweep) and for each one-ingredient variant of the recipe (factors)."""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from eos_jax import recipe
from eos_jax.analysis import plots, statistics
from eos_jax.studies import rows
from eos_jax.studies.rows import column
from eos_jax.studies.runs import NotApplicable
from eos_jax.studies.twins.common import (
    CompareRow,
    SourceRow,
    SourceStatistics,
    TwinsRun,
    check_compare,
    check_list,
    compare_row,
    onset_curves,
    slug,
    source_statistics,
    verdict,
)
from eos_jax.training import sources


def plan_sources(config) -> list[TwinsRun | NotApplicable]:
    """One ensemble per source of twins.sources; a source that does not apply to the recipe
    is a NotApplicable entry."""
    t = config.twins
    check_list("sources", t.sources)
    check_compare(t.compare)
    if t.member_values and len(t.sources) > 1:
        raise ValueError(
            f"twins.member_values {tuple(t.member_values)} are for one source; "
            f"got {len(t.sources)} sources"
        )
    runs = []
    for name in t.sources:
        reason = sources.get(name).not_applicable(config)
        if reason:
            runs.append(NotApplicable(f"source_{name}", reason))
            continue
        try:
            members = sources.make_members(
                config, name, tuple(t.member_values), t.members, t.tensor, t.index
            )
        except ValueError as error:
            if not t.member_values:
                raise
            raise ValueError(f"twins.member_values={tuple(t.member_values)}: {error}") from None
        runs.append(TwinsRun(f"source_{name}", config, members))
    return runs


def plan_sweep(config) -> list[TwinsRun]:
    """The two sources of twins.compare at each learning rate of twins.sweep_lrs."""
    t = config.twins
    check_compare(t.compare)
    check_list("sweep_lrs", t.sweep_lrs)
    runs = []
    for lr in t.sweep_lrs:
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"twins.sweep_lrs must hold numbers > 0, got {tuple(t.sweep_lrs)}")
        r = config.copy_and_resolve_references()
        r.optimizer.lr = float(lr)
        for name in t.compare:
            members = sources.make_members(r, name, (), t.members, t.tensor, t.index)
            runs.append(TwinsRun(f"lr_{lr:g}_{name}", r, members))
    return runs


def plan_factors(config) -> list[TwinsRun]:
    """The two sources of twins.compare for the recipe and each variant of twins.factors."""
    t = config.twins
    check_compare(t.compare)
    runs = []
    for label, _, r in factor_recipes(config):
        for name in t.compare:
            members = sources.make_members(r, name, (), t.members, t.tensor, t.index)
            runs.append(TwinsRun(f"{slug(label)}_{name}", r, members))
    return runs


def factor_recipes(config) -> list[tuple[str, str, ml_collections.ConfigDict]]:
    """(label, overrides, recipe) for the recipe itself and each 'label: overrides' entry of
    twins.factors."""
    variants = [("recipe", "", config.copy_and_resolve_references())]
    for entry in config.twins.factors:
        label, sep, text = str(entry).partition(":")
        if not sep or not label.strip():
            raise ValueError(f"twins.factors entry {entry!r} is not 'label: field=value ...'")
        text = text.strip()
        variants.append((label.strip(), text, recipe.with_overrides(config, text, "twins.factors")))
    labels = [label for label, _, _ in variants]
    slugs = [slug(label) for label in labels]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"twins.factors labels must differ (and not be 'recipe'), got {labels}")
    return variants


@dataclasses.dataclass(frozen=True)
class SweepRow:
    lr: float
    compare: CompareRow


@dataclasses.dataclass(frozen=True)
class FactorRow:
    """A variant of the recipe: its CompareRow, or (None) the note why it has none."""

    factor: str
    overrides: str
    compare: CompareRow | None = None
    wall_minutes: float | None = column("wall minutes")
    note: str | None = None


def tabulate_sources(config, runs, summaries, workdir) -> dict:
    table_rows, curves = [], {}
    for r in runs:
        name = r.name.removeprefix("source_")
        kind = sources.get(name).kind
        if isinstance(r, NotApplicable):
            table_rows.append(SourceRow(name, kind, members=0, note=r.reason))
            continue
        sub = os.path.join(workdir, r.name)
        table_rows.append(SourceRow(name, kind, source_statistics(sub, summaries[r.name])))
        curves[name] = (kind, onset_curves(sub))
    measured = [row.statistics for row in table_rows if row.statistics is not None]
    shown_fields = [f for f in SHOWN_STATISTICS if any(getattr(m, f) is not None for m in measured)]
    table = rows.write(
        workdir, "sources", table_rows, [_with_intervals(row, shown_fields) for row in table_rows]
    )
    plots.sources(
        [row for row in table_rows if row.statistics is not None],
        {name: c["weight D"] for name, (_, c) in curves.items()},
        os.path.join(workdir, "sources.png"),
    )
    plots.onset(curves, os.path.join(workdir, "onset.png"))
    line = verdict(config, summaries)
    return {"table": table, "rows": [rows.columns(row) for row in table_rows], "verdict": line}


# The statistics a sources table shows, in order (the held-out ones where measured).
SHOWN_STATISTICS = ("final_acc_std", "test_set_noise_std", "heldout_acc_std")
SHOWN_STATISTICS += ("test_set_part_std", "churn", "softmax_l2", "weight_d")


def _with_intervals(row: SourceRow, shown_fields) -> dict:
    """A sources row for reading: estimates as 'value [low, high]' (95% CI)."""
    m = row.statistics
    shown = {"source": row.source, "kind": row.kind}
    shown["members"] = row.members if m is None else m.members
    shown["final acc mean"] = "" if m is None else m.final_acc_mean
    names = rows.column_names(SourceStatistics)
    for field in shown_fields:
        value = None if m is None else getattr(m, field)
        if value is None:
            shown[names[field]] = ""
        elif isinstance(value, statistics.Estimate):
            shown[names[field]] = statistics.format_interval(value, ".2g")
        else:
            shown[names[field]] = value
    return {**shown, "note": row.note or ""}


def tabulate_sweep(config, runs, summaries, workdir) -> dict:
    rounding, seed = config.twins.compare
    table_rows, ratio_curves = [], {}
    for lr in config.twins.sweep_lrs:
        names = [f"lr_{lr:g}_{name}" for name in (rounding, seed)]
        table_rows.append(SweepRow(float(lr), compare_row(workdir, summaries, names)))
        (steps, num), (_, den) = (
            onset_curves(os.path.join(workdir, n))["accuracy std"] for n in names
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_curves[float(lr)] = (steps, list(np.divide(num, den)))
    table = rows.write(workdir, "sweep", table_rows)
    plots.sweep(table_rows, ratio_curves, f"{rounding}/{seed}", os.path.join(workdir, "sweep.png"))
    return {"table": table, "rows": [rows.columns(row) for row in table_rows]}


def tabulate_factors(config, runs, summaries, workdir) -> dict:
    """One row per variant: the compare_row, or why it has none (a diverged ensemble)."""
    table_rows = []
    for label, overrides, _ in factor_recipes(config):
        names = [f"{slug(label)}_{name}" for name in config.twins.compare]
        diverged = [summaries[n].what for n in names if not summaries[n].finished]
        if diverged:
            table_rows.append(FactorRow(label, overrides, note="diverged: " + diverged[0]))
            continue
        seconds = [summaries[n].seconds_this_session for n in names]
        minutes = sum(np.nan if s is None else s for s in seconds) / 60
        compare = compare_row(workdir, summaries, names)
        table_rows.append(FactorRow(label, overrides, compare, minutes))
    shown = [_ratio_columns(row) for row in table_rows]
    table = rows.write(workdir, "factors", table_rows, shown)
    plots.factors(table_rows, "/".join(config.twins.compare), os.path.join(workdir, "factors.png"))
    return {"table": table, "rows": [rows.columns(row) for row in table_rows]}


def _ratio_columns(row: FactorRow) -> dict:
    """A factors row for reading: the ratios as 'value [low, high]', accuracies to 4 digits,
    held-out stds to 5, churn and D to 3 significant ones."""
    c = row.compare
    shown = {"factor": row.factor, "members": "" if c is None else c.members}
    for key, ratio in (("ratio", c and c.ratio), ("held-out ratio", c and c.heldout_ratio)):
        shown[key] = "" if ratio is None else statistics.format_interval(ratio, ".2f")
    formats = {"final_acc_std": "{:.4f}", "heldout_acc_std": "{:.5f}"}
    formats |= {"churn": "{:.3g}", "weight_d": "{:.3g}"}
    shown["final acc mean"] = "" if c is None else f"{c.final_acc_mean:.4f}"
    names = rows.column_names(CompareRow)
    for stat, form in formats.items():
        for kind in ("rounding", "stochastic"):
            value = None if c is None else getattr(c, f"{kind}_{stat}")
            shown[names[f"{kind}_{stat}"]] = "" if value is None else form.format(value)
    shown["wall minutes"] = "" if row.wall_minutes is None else f"{row.wall_minutes:.1f}"
    return {**shown, "note": row.note or ""}
