"""The compared-sources studies: every source alone (sources), the verdict's two sources at
each learning rate (sweep) and for each one-ingredient variant of the recipe (factors)."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from eos_jax import recipe, results
from eos_jax.analysis import plots
from eos_jax.studies.runs import NotApplicable
from eos_jax.studies.twins.common import (
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


def tabulate_sources(config, runs, summaries, workdir) -> dict:
    rows, curves = [], {}
    for r in runs:
        name = r.name.removeprefix("source_")
        kind = sources.get(name).kind
        if isinstance(r, NotApplicable):
            rows.append({"source": name, "kind": kind, "members": 0, "note": r.reason})
            continue
        sub = os.path.join(workdir, r.name)
        rows.append({"source": name, "kind": kind, **source_statistics(sub, summaries[r.name])})
        curves[name] = (kind, onset_curves(sub))
    keys = [k for k in SHOWN_STATISTICS if any(k in row for row in rows)]
    shown = [_with_intervals(row, keys) for row in rows]
    table = results.write_table(workdir, "sources", rows, shown)
    plots.sources(
        [r for r in rows if r["members"]],
        {name: c["weight D"] for name, (_, c) in curves.items()},
        os.path.join(workdir, "sources.png"),
    )
    plots.onset(curves, os.path.join(workdir, "onset.png"))
    line = verdict(config, summaries)
    return {"table": table, "rows": rows, "verdict": line}


# The statistics a sources table shows, in order (the held-out ones where measured).
SHOWN_STATISTICS = ("final acc std", "test-set noise std", "heldout acc std")
SHOWN_STATISTICS += ("test-set part std", "churn", "softmax L2", "weight D")


def _with_intervals(row: dict, keys) -> dict:
    """A sources row for reading: estimates as 'value [low, high]' (95% CI)."""
    shown = {k: row.get(k, "") for k in ("source", "kind", "members", "final acc mean")}
    for key in keys:
        if key not in row:
            shown[key] = ""
        elif f"{key} low" in row:
            shown[key] = f"{row[key]:.2g} [{row[key + ' low']:.2g}, {row[key + ' high']:.2g}]"
        else:
            shown[key] = row[key]
    return {**shown, "note": row.get("note", "")}


def tabulate_sweep(config, runs, summaries, workdir) -> dict:
    rounding, seed = config.twins.compare
    rows, ratio_curves = [], {}
    for lr in config.twins.sweep_lrs:
        names = [f"lr_{lr:g}_{name}" for name in (rounding, seed)]
        rows.append({"lr": float(lr), **compare_row(workdir, summaries, names)})
        (steps, num), (_, den) = (
            onset_curves(os.path.join(workdir, n))["accuracy std"] for n in names
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_curves[float(lr)] = (steps, list(np.divide(num, den)))
    table = results.write_table(workdir, "sweep", rows)
    plots.sweep(rows, ratio_curves, f"{rounding}/{seed}", os.path.join(workdir, "sweep.png"))
    return {"table": table, "rows": rows}


def tabulate_factors(config, runs, summaries, workdir) -> dict:
    """One row per variant: the compare_row, or why it has none (a diverged ensemble)."""
    rows = []
    for label, overrides, _ in factor_recipes(config):
        names = [f"{slug(label)}_{name}" for name in config.twins.compare]
        diverged = [summaries[n]["what"] for n in names if summaries[n].get("status") == "diverged"]
        row = {"factor": label, "overrides": overrides}
        if diverged:
            rows.append({**row, "note": "diverged: " + diverged[0]})
            continue
        minutes = sum(summaries[n].get("seconds_this_session", np.nan) for n in names) / 60
        rows.append({**row, **compare_row(workdir, summaries, names), "wall minutes": minutes})
    shown = [_ratio_columns(row) for row in rows]
    table = results.write_table(workdir, "factors", rows, shown)
    plots.factors(rows, "/".join(config.twins.compare), os.path.join(workdir, "factors.png"))
    return {"table": table, "rows": rows}


def _ratio_columns(row: dict) -> dict:
    """A factors row for reading: the ratios as 'value [low, high]', accuracies to 4 digits,
    held-out stds to 5, churn and D to 3 significant ones."""
    shown = {"factor": row["factor"], "members": row.get("members", "")}
    for key in ("ratio", "held-out ratio"):
        shown[key] = (
            f"{row[key]:.2f} [{row[key + ' low']:.2f}, {row[key + ' high']:.2f}]"
            if key in row
            else ""
        )
    formats = {"final acc std": "{:.4f}", "heldout acc std": "{:.5f}"}
    formats |= {"churn": "{:.3g}", "weight D": "{:.3g}"}
    shown["final acc mean"] = f"{row['final acc mean']:.4f}" if "final acc mean" in row else ""
    for stat, form in formats.items():
        for kind in ("rounding", "stochastic"):
            key = f"{kind} {stat}"
            shown[key] = form.format(row[key]) if key in row else ""
    shown["wall minutes"] = f"{row['wall minutes']:.1f}" if "wall minutes" in row else ""
    return {**shown, "note": row.get("note", "")}
