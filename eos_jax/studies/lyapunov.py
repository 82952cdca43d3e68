"""Lyapunov exponents vs twins: is the twins' divergence the linearised growth of training?

At each learning rate of `lyapunov.lrs` the recipe trains update_k twins (k in
`lyapunov.ks`, lockstep, unrolled) in its own sub-directory; member 0 carries a tangent
(analysis.lyapunov.tangent_step) and the Lyapunov and MemberDistance observers record, every
`every_steps` steps, the finite-time exponent and the twins' parameter distance D (L2,
member 1 against member 0). Per lr the summary gives the exponent (per step) over the run
and over its first and second halves, the growth rate of log D over the same spans (from
the first step where D > 0), and the restraint factor D(t) / (D(t0) exp(L(t) - L(t0))) at
the end and over the second half (restraint_late; analysis.lyapunov.restraint): the
twins' distance against the linearised growth L of the same stretch of training (> 1: D
grew faster than one linearised perturbation: fresh rounding keeps being injected, or a
nonlinear event such as a ReLU or max-pool switch amplified it; < 1: the nonlinearity
held it back). Table (CSV, Markdown), figure (lyapunov.png), summary.json.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from eos_jax import recipe, results
from eos_jax.analysis import divergence, lyapunov, plots
from eos_jax.studies.runs import PlannedRun, train_all
from eos_jax.training import build, sources, steps, trainer
from eos_jax.training.ensemble import Ensemble


def default_settings() -> ml_collections.ConfigDict:
    """config.lyapunov: learning rates, twins' k values, observation interval, tangent seed."""
    s = ml_collections.ConfigDict()
    s.lrs = (0.025, 0.05, 0.08, 0.1)
    s.ks = (1, 3)
    s.every_steps = 31
    s.seed = 0
    return s


@dataclasses.dataclass(frozen=True)
class LyapunovRun(PlannedRun):
    """The twins of one learning rate."""

    lr: float = float("nan")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def plan(config) -> list[LyapunovRun]:
    """One run per lr. Bad settings: ValueError."""
    s = config.lyapunov
    if not s.lrs or any(not (_is_number(lr) and lr > 0) for lr in s.lrs):
        raise ValueError(f"lyapunov.lrs={tuple(s.lrs)!r} must be positive learning rates")
    if len(set(s.lrs)) != len(s.lrs):
        raise ValueError(f"lyapunov.lrs={tuple(s.lrs)!r} repeats a learning rate")
    if not isinstance(s.every_steps, int) or s.every_steps < 1:
        raise ValueError(f"lyapunov.every_steps={s.every_steps!r} must be an integer >= 1")
    if not isinstance(s.seed, int) or s.seed < 0:
        raise ValueError(f"lyapunov.seed={s.seed!r} must be an integer >= 0")
    recipe.validate(config)
    runs = []
    for lr in s.lrs:
        r = config.copy_and_resolve_references()
        r.optimizer.lr = float(lr)
        runs.append(LyapunovRun(f"lr{lr}", r, _members(r, tuple(s.ks)), lr=float(lr)))
    return runs


def _members(config, ks: tuple) -> list:
    if len(ks) != 2 or ks[0] == ks[1]:
        raise ValueError(f"lyapunov.ks={ks!r} must be two different k values (the twins)")
    return sources.make_members(config, "update_k", values=ks)


def _trainer(config, r: LyapunovRun, dataset, workdir: str) -> trainer.Trainer:
    s = config.lyapunov
    make_steps = [lyapunov.tangent_step(s.seed)] + [steps.make_train_step] * (len(r.members) - 1)
    ens = Ensemble(r.members, dataset, "unrolled", make_step=make_steps)
    observers = [lyapunov.Lyapunov(s.every_steps), divergence.MemberDistance(s.every_steps)]
    return trainer.Trainer(ens, r.recipe, os.path.join(workdir, r.name), observers)


def execute(config, workdir: str) -> dict:
    """Trains every lr (resuming, skipping finished ones), writes the table and figure."""
    runs = plan(config)
    dataset = build.dataset(config)
    trainers = {r.name: _trainer(config, r, dataset, workdir) for r in runs}
    summaries = train_all(config, workdir, trainers)
    rows, curves = [], {}
    for r in runs:
        records = trainer.read_metrics(os.path.join(workdir, r.name))
        row, curve = summarize_run(r, records, summaries[r.name])
        rows.append(row)
        curves[r.lr] = curve
    table = results.write_table(workdir, "lyapunov", rows)
    plots.lyapunov_curves(curves, os.path.join(workdir, "lyapunov.png"))
    summary = {"table": table, "runs": rows}
    results.finish(workdir, summary)
    return summary


def _rate(steps_: np.ndarray, values: np.ndarray, a: int, b: int) -> float | None:
    """(values[b] - values[a]) / (steps[b] - steps[a]), None for an empty span."""
    return None if b <= a else float((values[b] - values[a]) / (steps_[b] - steps_[a]))


def summarize_run(r: LyapunovRun, records: list[dict], done: dict) -> tuple[dict, dict]:
    """One lr's row and curves, from its records (through the observers' readers) and its
    summary."""
    distances = divergence.MemberDistance.read(records)
    growth = lyapunov.Lyapunov.read(records)
    # step 0 (a record of the tangent alone) has no distance: spans start at the first window
    at = np.intersect1d(growth.steps, distances.steps)
    pick = np.searchsorted(growth.steps, at)
    log_growth = growth["log_growth"][0, pick]
    windows = growth["window_exponent"][0, pick]
    distance = distances["params_l2"][1, np.searchsorted(distances.steps, at)]
    end, mid = len(at) - 1, int(np.searchsorted(at, at[-1] / 2))
    apart = np.flatnonzero(distance > 0)
    first = int(apart[0]) if apart.size else end
    log_d = np.log(np.where(distance > 0, distance, np.nan))
    predicted = distance[first] * np.exp(log_growth - log_growth[first])
    row = {
        "lr": r.lr,
        "steps": int(done["steps"]),
        "exponent": float(log_growth[end] / at[end]),
        "exponent_early": float(log_growth[mid] / at[mid]),  # from step 0
        "exponent_late": _rate(at, log_growth, mid, end),
        "twins_apart_at_step": int(at[first]) if apart.size else None,
        "distance_end": float(distance[end]),
        "distance_growth": _rate(at, log_d, first, end),
        "distance_growth_early": _rate(at, log_d, first, max(first, mid)),
        "distance_growth_late": _rate(at, log_d, max(first, mid), end),
        "restraint_end": lyapunov.restraint(distance, log_growth, first, end),
        # the same over the second half alone: D(end) / (D(mid) exp(L(end) - L(mid)))
        "restraint_late": lyapunov.restraint(distance, log_growth, max(first, mid), end),
        "test_accuracy": done["members"][0]["last_test_accuracy"],
        "twin_test_accuracy": done["members"][1]["last_test_accuracy"],
    }
    curve = {
        "steps": at.tolist(),
        "window_exponent": [None if np.isnan(w) else float(w) for w in windows],
        "distance": distance.tolist(),
        "predicted": [float(p) if apart.size else None for p in predicted],
        "first": int(at[first]),
    }
    return row, curve
