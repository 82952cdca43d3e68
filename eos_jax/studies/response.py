"""Why one rounding grows: the forced linear response of twin pairs, with activation switches
counted and the finite-time Lyapunov exponent beside them.

Each run is one twin pair of the recipe (lockstep, unrolled) for one activation, source of
difference, learning rate and seed (`response.*` settings): update_k twins (k = 1 and 3:
member 1 rounds its update differently at every step) or ulp_init twins (one entry of
`response.tensor` moved by `response.ulps` ulps at the start, then the same map). Member 0
carries a tangent (analysis.lyapunov.tangent_step). Observers, every step by default:
LinearResponse (analysis.response: the twins' difference Delta against the responses
delta^f to the perturbation alone and delta^r to the full rounding forcing, and the
nonlinear part N of each step), Switches (analysis.regions: pre-activations of member 1
with another sign than member 0's over the first `switches_size` training examples) and
Lyapunov (member 0's finite-time exponent).

Per run the table gives: rounding_jump_at, the first recorded step where the twins' own
rounding forcing ||r|| exceeds `leave_ratio` times all of its earlier values (a switch on
which float32 and float64 disagree, analysis.response; the CSV adds ||r||, ||N||, ||Delta||
before and after and ||delta^r|| there); leaves_at, the first recorded step where
||Delta|| / ||delta^r|| exceeds `leave_ratio` (the twins leave the linear response), with
the switch count and ||N|| there and at the record before; restrained_at, the first where
it falls below 1 / `leave_ratio` (the response overshoots: the nonlinearity restrains the
twins); the first switch (step and layer); which layer holds most of ||Delta||^2
(parameters and momentum of a layer together) at leaves_at and at the end; ||Delta||,
||delta^r||, ||delta^f|| at the end; and over the second half of the run the growth rate
of log ||Delta|| beside the tangent's exponent (per step). Figure (response.png):
||Delta||, ||delta^r|| and ||delta^f|| against step, log scale, first switches, the
rounding jump and leaves_at marked, one panel per activation (rows: sources).
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import ml_collections
import numpy as np

from eos_jax import bits, numerics, recipe, results
from eos_jax.analysis import divergence, lyapunov, plots, regions
from eos_jax.analysis import response as linear_response
from eos_jax.models import create_model
from eos_jax.models.layers import ACTIVATIONS
from eos_jax.studies import rows
from eos_jax.studies.rows import column
from eos_jax.studies.runs import PlannedRun, train_all
from eos_jax.training import build, sources, steps, trainer
from eos_jax.training.ensemble import Ensemble
from eos_jax.training.summary import RunSummary

SOURCES = ("update_k", "ulp_init")


def default_settings() -> ml_collections.ConfigDict:
    """config.response: what varies between runs, and the observers' settings."""
    s = ml_collections.ConfigDict()
    s.activations = ("relu", "swish", "gelu")  # a kink, and two smooth ones
    s.sources = SOURCES
    s.lrs = (0.05, 0.1)
    s.seeds = (0, 1, 2)  # each sets the init, data and augmentation seeds (and the tangent's)
    s.ks = (1, 3)  # update_k twins
    s.ulps = 1  # ulp_init twins: how far the edited entry moves
    s.tensor = "conv1/kernel"  # ... in which initial tensor (its first normal nonzero entry)
    s.every_steps = 1  # LinearResponse and Lyapunov records
    s.switches_every_steps = 1
    s.switches_size = 512  # the probe set: the first training examples
    s.leave_ratio = 10.0  # the twins leave the linear response: ||Delta|| / ||delta^r|| > this
    # LinearResponse and Switches observe steps 0 .. observed_steps (None: the whole run);
    # the tangent and the member distances (churn, weight D) go on to the end, so that the
    # forecast can predict the end from the observed start.
    s.observed_steps = ml_collections.config_dict.placeholder(int)
    return s


@dataclasses.dataclass(frozen=True)
class ResponseRun(PlannedRun):
    """One twin pair."""

    activation: str = ""
    source: str = ""
    lr: float = float("nan")
    seed: int = 0


def _distinct(name: str, values, allowed, what: str) -> tuple:
    """The values of response.{name}: ValueError naming the field, the value and `what` is
    allowed, unless they are one or more allowed values, each once."""
    values = tuple(values)
    bad = [v for v in values if not allowed(v)]
    if not values or bad or len(set(values)) != len(values):
        problem = f"{bad[0]!r} is not one" if bad else "empty" if not values else "a repeat"
        raise ValueError(f"response.{name}={values!r} ({problem}): give one or more of {what}")
    return values


def plan(config) -> list[ResponseRun]:
    """One run per activation x source x lr x seed. Bad settings: ValueError."""
    s = config.response
    activations = _distinct(
        "activations", s.activations, lambda a: a in ACTIVATIONS, ", ".join(ACTIVATIONS)
    )
    chosen = _distinct("sources", s.sources, lambda x: x in SOURCES, ", ".join(SOURCES))
    lrs = _distinct("lrs", s.lrs, lambda lr: recipe.is_number(lr) and lr > 0, "numbers > 0")
    seeds = _distinct("seeds", s.seeds, lambda x: recipe.is_int(x) and x >= 0, "integers >= 0")
    ks = tuple(s.ks)
    if len(ks) != 2 or ks[0] == ks[1] or not all(recipe.is_int(k) and k >= 1 for k in ks):
        raise ValueError(f"response.ks={ks!r} must be two different k values, integers >= 1")
    if not recipe.is_int(s.ulps) or s.ulps == 0:
        raise ValueError(f"response.ulps={s.ulps!r} must be a nonzero integer")
    for name in ("every_steps", "switches_every_steps"):
        if not recipe.is_int(s[name]) or s[name] < 1:
            raise ValueError(f"response.{name}={s[name]!r} must be an integer >= 1")
    observed = s.get("observed_steps")
    if observed is not None and not (recipe.is_int(observed) and observed >= 1):
        raise ValueError(f"response.observed_steps={observed!r} must be None or an integer >= 1")
    if not (recipe.is_number(s.leave_ratio) and s.leave_ratio > 1):
        raise ValueError(f"response.leave_ratio={s.leave_ratio!r} must be a number > 1")
    recipe.validate(config)
    runs = []
    for activation in activations:
        for source in chosen:
            for lr in lrs:
                for seed in seeds:
                    r = config.copy_and_resolve_references()
                    with r.unlocked():  # a config from the command line is locked
                        r.model_kwargs.activation = activation
                    create_model(r.model, **r.model_kwargs)  # no activation option: ValueError
                    r.optimizer.lr = float(lr)
                    r.seeds.update(init=seed, data=seed, aug=seed)
                    if source == "update_k":
                        members = sources.make_members(r, source, values=tuple(s.ks))
                    else:
                        members = sources.make_members(r, source, (0, s.ulps), tensor=s.tensor)
                    name = f"{activation}_{source}_lr{lr}_seed{seed}"
                    runs.append(ResponseRun(name, r, members, activation, source, float(lr), seed))
    return runs


def configure_numerics(config) -> list[ResponseRun]:
    """The config's numerics with x64 on (the response's float64 copy needs it for the whole
    process); returns the plan, for `execute`."""
    recipe.configure_numerics(config)
    planned = plan(config)
    numerics.enable_x64()
    return planned


def _trainer(config, r: ResponseRun, dataset, workdir: str) -> trainer.Trainer:
    s = config.response
    make_steps = [lyapunov.tangent_step(r.seed), steps.make_train_step]
    ens = Ensemble(r.members, dataset, "unrolled", make_step=make_steps)
    last = s.get("observed_steps")
    observers = [
        linear_response.LinearResponse(s.every_steps, last),
        regions.Switches(s.switches_every_steps, s.switches_size, s.switches_size, last),
        lyapunov.Lyapunov(s.every_steps),
        divergence.MemberDistance(r.recipe.eval_every_steps),
    ]
    return trainer.Trainer(ens, r.recipe, os.path.join(workdir, r.name), observers)


def _check_tensor(tensor, runs, trainers) -> None:
    """ValueError naming response.tensor unless the ulp_init runs' model has that tensor
    (read from the parameter shapes: nothing is computed)."""
    for r in runs:
        if r.source == "ulp_init":
            shapes = trainers[r.name].ensemble.param_shapes()
            flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
            known = [bits.path_name(path) for path, _ in flat]
            if tensor not in known:
                raise ValueError(
                    f"response.tensor={tensor!r} is no parameter of the model; known: "
                    f"{', '.join(known)}"
                )
            return


def execute(config, workdir: str, planned: list | None = None) -> dict:
    """Trains every run (resuming, skipping finished ones), writes the table and figure.
    x64 must be on (configure_numerics); planned: `plan(config)` when already made."""
    runs = plan(config) if planned is None else planned
    dataset = build.dataset(config)
    size = config.response.switches_size
    if not (recipe.is_int(size) and 1 <= size <= dataset.num_train):
        raise ValueError(
            f"response.switches_size={size!r} must be an integer in [1, {dataset.num_train}] "
            "(the first training examples)"
        )
    trainers = {r.name: _trainer(config, r, dataset, workdir) for r in runs}
    _check_tensor(config.response.tensor, runs, trainers)
    summaries = train_all(config, workdir, trainers, keep_going=True, release_programs=True)
    table_rows, curves = [], {}
    for r in runs:
        records = trainer.read_metrics(os.path.join(workdir, r.name))
        row, curve = summarize_run(r, records, summaries[r.name], config.response.leave_ratio)
        table_rows.append(row)
        curves[r.name] = curve
    flat = [rows.columns(row) for row in table_rows]
    table = rows.write(workdir, "response", table_rows, results.shown_columns(flat, SHOWN))
    plots.response_curves(curves, os.path.join(workdir, "response.png"))
    summary = {"table": table, "runs": flat}
    skill, predictions = forecast(table_rows, churn_floor=0.5 / len(dataset.test_labels))
    if skill:
        summary["forecast"] = rows.write(workdir, "forecast", skill)
        path = os.path.join(workdir, "forecast_runs.csv")
        results.write_csv(path, [rows.columns(p) for p in predictions])
        every_run = [p for p in predictions if p.runs_of == "all runs"]
        plots.forecast(every_run, os.path.join(workdir, "forecast.png"))
    results.finish(workdir, summary)
    return summary


# The columns of the Markdown table (the CSV has them all).
SHOWN = (
    "activation",
    "source",
    "lr",
    "seed",
    "status",  # finished, or diverged (its other cells: up to the divergence)
    "rounding_jump_at",
    "leaves_at",
    "restrained_at",
    "switches_at_leave",
    "switches_before_leave",
    "nonlinear_at_leave",
    "nonlinear_before_leave",
    "first_switch",
    "first_switch_layer",
    "top_layer_leave",
    "top_layer_end",
    "delta_end",
    "response_r_end",
    "response_f_end",
    "delta_growth_late",
    "exponent_late",
    "restraint_late",
)


@dataclasses.dataclass(frozen=True)
class Events:
    """When the twins leave the linear response (||Delta|| / ||delta^r|| > leave_ratio), are
    restrained (< 1 / leave_ratio), first switch, and the rounding jump; the switches, N and
    the layer holding most of ||Delta||^2 there (None: it did not happen, or NaN)."""

    steps: int
    leaves_at: int | None = column(kept=True)
    rounding_jump_at: int | None = column(kept=True)
    restrained_at: int | None = column(kept=True)
    switches_at_leave: int | None = column(kept=True)
    switches_before_leave: int | None = column(kept=True)
    nonlinear_at_leave: float | None = column(kept=True)
    nonlinear_before_leave: float | None = column(kept=True)
    first_switch: int | None = column(kept=True)
    first_switch_layer: str | None = column(kept=True)
    top_layer_leave: str | None = column(kept=True)
    top_layer_end: str | None = column(kept=True)


@dataclasses.dataclass(frozen=True)
class ObservedEnd:
    """At the last observed step: ||Delta||, ||delta^r||, ||delta^f|| and their ratios; over
    the second half, the growth of log ||Delta|| beside the tangent's exponent and the
    restraint; the exponent over the observed steps; the switches (None: none, or NaN)."""

    delta_end: float | None = column(kept=True)
    response_r_end: float | None = column(kept=True)
    response_f_end: float | None = column(kept=True)
    ratio_r_end: float | None = column(kept=True)
    ratio_f_end: float | None = column(kept=True)
    delta_growth_late: float | None = column(kept=True)
    exponent_late: float | None = column(kept=True)
    # the twins' growth over the second half against the tangent's (None: no stretch)
    restraint_late: float | None = column(kept=True)
    exponent_observed: float | None = column(kept=True)
    switches_end: int | None = column(kept=True)


@dataclasses.dataclass(frozen=True)
class RoundingJump:
    """||r|| and ||N|| at the rounding jump, ||Delta|| before and at it, ||delta^r|| at it."""

    rounding_jump: float | None = column(kept=True)
    nonlinear_at_jump: float | None = column(kept=True)
    delta_before_jump: float | None = column(kept=True)
    delta_at_jump: float | None = column(kept=True)
    response_r_at_jump: float | None = column(kept=True)


@dataclasses.dataclass(frozen=True)
class RunEnd:
    """The twins at the last step trained (the run's end): churn and weight distance D."""

    run_steps: int
    churn_end: float
    weight_d_end: float = column("weight_D_end")


@dataclasses.dataclass(frozen=True)
class ResponseRow:
    """A response-table row: the run, its Events and ObservedEnd, its RoundingJump where
    there was one and its RunEnd where the member distances were recorded."""

    name: str
    activation: str
    source: str
    lr: float
    seed: int
    status: str  # finished, or diverged (its other cells: up to the divergence)
    events: Events
    observed_end: ObservedEnd
    jump: RoundingJump | None = None
    run_end: RunEnd | None = None


# What the forecast predicts (at the run's end, on a log10 scale) from what it reads over
# the observed steps only.
FORECAST_TARGETS = {
    "churn_end": lambda row: row.run_end.churn_end,
    "weight_D_end": lambda row: row.run_end.weight_d_end,
}
FORECAST_FEATURES = {
    "kink (ReLU 1, smooth 0), known before training": lambda row: float(row.activation == "relu"),
    "log10 lr, known before training": lambda row: float(np.log10(row.lr)),
    "first switch (step)": lambda row: row.events.first_switch,
    "first rounding jump (step)": lambda row: row.events.rounding_jump_at,
    "log10 (1 + switches) at the last observed step": lambda row: _log10(
        None if row.observed_end.switches_end is None else 1 + row.observed_end.switches_end
    ),
    "log10 ||Delta|| at the last observed step": lambda row: _log10(row.observed_end.delta_end),
    "log ||Delta|| growth rate, late observed": lambda row: row.observed_end.delta_growth_late,
    "finite-time exponent over the observed steps": lambda row: row.observed_end.exponent_observed,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForecastSkill:
    """A forecast-table row: one feature's leave-one-out forecast of one target over a group
    of runs (the runs used; the RMS error in log10 units and as a factor; the skill)."""

    runs_of: str = column("runs of")
    target: str
    feature: str
    runs: int
    rms_error: float = column("rms error (log10)")
    error_factor: float = column("error factor")
    rms_of_mean: float = column("rms of the mean (log10)")
    skill: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForecastRun:
    """A forecast_runs row: one run's target forecast by its group's most skilful feature."""

    runs_of: str = column("runs of")
    target: str
    feature: str
    name: str
    activation: str
    observed: float
    predicted: float
    error_factor: float = column("error factor")


def _log10(x) -> float | None:
    return None if x is None or x <= 0 else float(np.log10(x))


def forecast(
    runs: list[ResponseRow], churn_floor: float
) -> tuple[list[ForecastSkill], list[ForecastRun]]:
    """Predicts each run's final churn and weight D (log10; churn floored at churn_floor,
    half a test example) from one feature, by a straight line fitted to the other runs
    (leave-one-out, leaving out with each run the runs that share its member 0: `_member0`),
    over all finished runs, over each activation's alone and, where the runs have several
    sources, over each source's alone (groups of 4 runs or more; skipped where the feature
    or the target is constant in the group). Returns (one row per group, target and
    feature: the runs used, the RMS error in log10 units and as a factor, and the skill
    1 - rms / rms of predicting the other runs' mean; one row per group, run and target
    with the prediction of the group's most skilful feature beside the observed value).
    Empty with fewer than 4 finished runs."""
    done = [r for r in runs if r.status == "finished" and r.run_end is not None]
    skill, predictions = [], []
    for group, members in _forecast_groups(done).items():
        for target, value in FORECAST_TARGETS.items():
            floor = churn_floor if target == "churn_end" else 0.0
            best = None
            for feature, read in FORECAST_FEATURES.items():
                fitted = _fit_feature(members, value, floor, read)
                if fitted is None:
                    continue  # nothing to fit, or nothing to predict
                used, y, fit = fitted
                skill.append(
                    ForecastSkill(
                        runs_of=group,
                        target=target,
                        feature=feature,
                        runs=len(used),
                        rms_error=fit.rms,
                        error_factor=10**fit.rms,
                        rms_of_mean=fit.rms_of_mean,
                        skill=fit.skill,
                    )
                )
                # by skill: features read on different runs have different baselines
                if fit.skill > (-np.inf if best is None else best[0].skill):
                    best = (fit, feature, used, y)
            if best is not None:
                predictions += _forecast_rows(group, target, *best)
    return skill, predictions


def _forecast_groups(done: list[ResponseRow]) -> dict[str, list[ResponseRow]]:
    """{group: its runs}: all runs, each activation's, and each source's where there are
    several."""
    groups = {"all runs": done}
    for activation in dict.fromkeys(r.activation for r in done):
        groups[f"{activation} only"] = [r for r in done if r.activation == activation]
    by_source = dict.fromkeys(r.source for r in done)
    for source in by_source if len(by_source) > 1 else ():
        groups[f"{source} only"] = [r for r in done if r.source == source]
    return groups


def _fit_feature(members: list[ResponseRow], target, floor: float, read):
    """(the runs used, their log10 `target` (a FORECAST_TARGETS reader), the LeaveOneOut
    fit of it on the feature `read`), or None where fewer than 4 member-0 groups have both
    or either is constant."""
    known = [(r, read(r)) for r in members if max(target(r), floor) > 0]
    known = [(r, v) for r, v in known if v is not None and np.isfinite(v)]
    used = [r for r, _ in known]
    x = np.array([v for _, v in known])
    y = np.log10([max(target(r), floor) for r in used])
    shared = [_member0(r) for r in used]
    if len(set(shared)) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return used, y, fit_leave_one_out(x, y, shared)


def _forecast_rows(group: str, target: str, fit, feature: str, used, y) -> list[ForecastRun]:
    """One row per run of the group: the best feature's prediction beside the observed."""
    return [
        ForecastRun(
            runs_of=group,
            target=target,
            feature=feature,
            name=r.name,
            activation=r.activation,
            observed=float(10**yi),
            predicted=float(10**pi),
            error_factor=float(10 ** abs(pi - yi)),
        )
        for r, pi, yi in zip(used, fit.predicted, y, strict=True)
    ]


@dataclasses.dataclass(frozen=True)
class LeaveOneOut:
    """A straight line's leave-one-out predictions of y from x, their RMS error, that of
    predicting the other points' mean, and the skill 1 - rms / rms_of_mean (NaN where the
    mean predicts exactly)."""

    predicted: np.ndarray
    rms: float
    rms_of_mean: float
    skill: float


def fit_leave_one_out(x: np.ndarray, y: np.ndarray, shared: list) -> LeaveOneOut:
    """The leave-one-out regression of y on x, leaving out with each point those that share
    its `shared` key."""
    predicted = _leave_one_out(x, y, shared)
    baseline = _leave_one_out(np.zeros_like(x), y, shared)
    rms = float(np.sqrt(np.mean((predicted - y) ** 2)))
    rms0 = float(np.sqrt(np.mean((baseline - y) ** 2)))
    return LeaveOneOut(predicted, rms, rms0, 1 - rms / rms0 if rms0 > 0 else float("nan"))


def _member0(row: ResponseRow) -> tuple:
    """What fixes a run's member 0: the runs of each source at one activation, lr and seed
    share it, hence its trajectory and every feature read from member 0 alone (the kink,
    the lr, the exponent), and they end alike; a forecast that kept one of them to predict
    another would be scored on a copy."""
    return (row.activation, row.lr, row.seed)


def _leave_one_out(x: np.ndarray, y: np.ndarray, shared: list) -> np.ndarray:
    """For each i, the line fitted to the points whose `shared` key differs from i's (a
    constant where x does not vary among them) evaluated at x[i]."""
    out = np.empty_like(y)
    for i in range(len(y)):
        keep = np.array([key != shared[i] for key in shared])
        if np.ptp(x[keep]) > 0:
            slope, intercept = np.polyfit(x[keep], y[keep], 1)
            out[i] = slope * x[i] + intercept
        else:
            out[i] = np.mean(y[keep])
    return out


_LAYER = re.compile(r"\['([^']+)'\]")


def layer_of(path: str) -> str:
    """The layer a state tensor belongs to ('conv1' for params and momentum of conv1)."""
    found = _LAYER.search(path)
    return found[1] if found else path


def layer_shares(series, column: int) -> dict[str, float]:
    """{layer: its share of ||Delta||^2} at one recorded step of a LinearResponse Series."""
    squares: dict[str, float] = {}
    for field, values in series.values.items():
        if field.startswith("delta/"):
            layer = layer_of(field.split("/", 1)[1])
            squares[layer] = squares.get(layer, 0.0) + float(values[1, column]) ** 2
    total = sum(squares.values())
    return {k: v / total for k, v in squares.items()} if total > 0 else {}


def _top(shares: dict[str, float]) -> str | None:
    if not shares:
        return None
    layer = max(shares, key=shares.get)
    return f"{layer} ({shares[layer]:.0%})"


def _value(x) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def first_jump(values: np.ndarray, factor: float) -> int | None:
    """The first index from 3 on whose value exceeds `factor` times every value from index 2
    up to it (NaN skipped), or None. On ||r_t||, recorded from step 1 on: a jump of the
    twins' own rounding forcing, which a smooth step's roundings do not make (index 1 is
    update_k twins' first step, taken from identical states, so the comparison starts at
    2)."""
    for i in range(3, len(values)):
        before = values[2:i][~np.isnan(values[2:i])]
        if before.size and values[i] > factor * before.max():
            return i
    return None


def summarize_run(r: ResponseRun, records: list[dict], done: RunSummary, leave_ratio: float):
    """One run's row and curve, from its records (through the observers' readers and their
    summaries)."""
    resp = linear_response.LinearResponse.read(records)
    switches_at, layer_steps = _switches(regions.Switches.read(records))
    rounding_jump = first_jump(resp["forcing_r"][1], leave_ratio)
    events = _events(resp, leave_ratio, rounding_jump, switches_at, layer_steps)
    row = ResponseRow(
        r.name,
        r.activation,
        r.source,
        r.lr,
        r.seed,
        done.status,
        events,
        _observed_end(resp, lyapunov.Lyapunov.read(records), switches_at),
        # the step it happens in: r, N and Delta before and after
        jump=None if rounding_jump is None else _jump(resp, rounding_jump),
        run_end=_run_end(divergence.MemberDistance.read(records)),
    )
    curve = {
        "activation": r.activation,
        "source": r.source,
        "label": f"lr {r.lr} seed {r.seed}",
        "steps": resp.steps.tolist(),
        "delta": resp["delta"][1].tolist(),
        "response_r": resp["response_r"][1].tolist(),
        "response_f": resp["response_f"][1].tolist(),
        "first_switches": sorted(layer_steps.values()),
        "leaves_at": events.leaves_at,
        "rounding_jump_at": events.rounding_jump_at,
    }
    return row, curve


def _switches(series):
    """(switches_at(step): member 1's switched pre-activations over all layers at a recorded
    step, None where none was recorded; {layer: the first step with a switch there})."""
    per_layer = [v[1] for f, v in series.values.items() if f.startswith("switched/")]
    switched = np.sum(per_layer, axis=0) if per_layer else np.zeros(len(series.steps))
    first = regions.Switches.first_switch(series)
    layer_steps = {layer: v[1] for layer, v in first.items() if not np.isnan(v[1])}

    def switches_at(step):
        at = np.flatnonzero(series.steps == step)
        return int(switched[at[0]]) if at.size else None

    return switches_at, layer_steps


def _events(resp, leave_ratio: float, rounding_jump, switches_at, layer_steps) -> Events:
    """The run's Events from its LinearResponse Series, the index of its rounding jump and
    its switches (`_switches`)."""
    steps_, ratio = resp.steps, resp["ratio_r"][1]
    left = np.flatnonzero(ratio > leave_ratio)
    leave = int(left[0]) if left.size else None
    restrained = np.flatnonzero(ratio < 1 / leave_ratio)
    before = None if leave is None or leave == 0 else leave - 1
    return Events(
        steps=int(steps_[-1]),
        leaves_at=None if leave is None else int(steps_[leave]),
        rounding_jump_at=None if rounding_jump is None else int(steps_[rounding_jump]),
        restrained_at=int(steps_[restrained[0]]) if restrained.size else None,
        switches_at_leave=None if leave is None else switches_at(steps_[leave]),
        switches_before_leave=None if before is None else switches_at(steps_[before]),
        nonlinear_at_leave=None if leave is None else _value(resp["nonlinear"][1, leave]),
        nonlinear_before_leave=None if before is None else _value(resp["nonlinear"][1, before]),
        first_switch=int(min(layer_steps.values())) if layer_steps else None,
        first_switch_layer=min(layer_steps, key=layer_steps.get) if layer_steps else None,
        top_layer_leave=None if leave is None else _top(layer_shares(resp, leave)),
        top_layer_end=_top(layer_shares(resp, len(steps_) - 1)),
    )


def _observed_end(resp, growth, switches_at) -> ObservedEnd:
    """The run's ObservedEnd from its LinearResponse Series (LinearResponse.summary: the
    twin's), its Lyapunov Series and its switches (`_switches`)."""
    steps_, delta, ratio = resp.steps, resp["delta"][1], resp["ratio_r"][1]
    end, mid = len(steps_) - 1, int(np.searchsorted(steps_, steps_[-1] / 2))
    log_growth = growth["log_growth"][0, np.searchsorted(growth.steps, steps_)]
    span = steps_[end] - steps_[mid]
    last = linear_response.LinearResponse.summary(resp)
    assert last is not None  # steps_[-1] above has already needed a record
    return ObservedEnd(
        delta_end=_value(last.delta_end),
        response_r_end=_value(last.response_r_end),
        response_f_end=_value(last.response_f_end),
        ratio_r_end=_value(ratio[end]),
        ratio_f_end=_value(resp["ratio_f"][1, end]),
        delta_growth_late=_value(np.log(delta[end] / delta[mid]) / span)
        if span > 0 and delta[mid] > 0
        else None,
        exponent_late=_value((log_growth[end] - log_growth[mid]) / span) if span > 0 else None,
        restraint_late=lyapunov.restraint(delta, log_growth, mid, end),
        exponent_observed=_value(log_growth[end] / steps_[end]) if steps_[end] > 0 else None,
        switches_end=switches_at(steps_[end]),
    )


def _jump(resp, jump: int) -> RoundingJump:
    """The RoundingJump at index `jump` of the LinearResponse Series."""
    at = {q: resp[q][1] for q in ("forcing_r", "nonlinear", "delta", "response_r")}
    return RoundingJump(
        rounding_jump=_value(at["forcing_r"][jump]),
        nonlinear_at_jump=_value(at["nonlinear"][jump]),
        delta_before_jump=_value(at["delta"][jump - 1]),
        delta_at_jump=_value(at["delta"][jump]),
        response_r_at_jump=_value(at["response_r"][jump]),
    )


def _run_end(distances) -> RunEnd | None:
    """The RunEnd from the MemberDistance Series (its summary of member 1, the twin), None
    without records."""
    if not distances.steps.size:
        return None
    last = divergence.MemberDistance.summary(distances, 1)
    return RunEnd(int(distances.steps[-1]), last.churn, last.params_rel_l1)
