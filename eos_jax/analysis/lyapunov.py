"""The finite-time maximal Lyapunov exponent of training, measured along an ordinary run.

A tangent-carrying step (`tangent_step`, a make_step for the Ensemble) makes a member's state
a `TangentState`: the TrainState plus a unit tangent over its floating leaves (parameters,
momentum, BatchNorm statistics) and the accumulated log growth. Each step runs the plain
train step (the state's bits are those of the plain run) and one exact linearisation of it
(linearisation.tangent_map), then renormalises the tangent and adds log ||dU t|| to
`log_growth` (Benettin with R = 1). This is the project's one tangent mechanism: a one-off
propagation is the same step run on the batches wanted. The `Lyapunov` observer records
log_growth and the running exponent log_growth / step for every member that carries a
tangent; its reader adds the exponent over each window between records, and `restraint`
compares a twin pair's distance with the linearised growth of the same stretch.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from eos_jax.analysis.flat import StateSpace
from eos_jax.analysis.linearisation import tangent_map
from eos_jax.training import steps
from eos_jax.training.observers import Observer, read_series, record_fields


@flax.struct.dataclass
class TangentState(steps.TrainState):
    """A TrainState with a unit tangent (flat, over its floating leaves) and the log growth
    accumulated since step 0: checkpointed and restored with it."""

    tangent: jax.Array
    log_growth: jax.Array


def plain(state: TangentState) -> steps.TrainState:
    """The TrainState part of a TangentState."""
    return steps.TrainState(state.step, state.params, state.batch_stats, state.opt_state)


class TangentStep:
    """(TangentState, batch) -> (TangentState, metrics): the plain step plus one JVP.

    The new TrainState is the plain step's own output (the JVP's primal is discarded), so
    the member's bits are those of the run without a tangent. `init(state)` starts the
    tangent from a seeded normal vector, normalised (the Ensemble calls it).
    """

    def __init__(self, train_step, seed: int = 0):
        self.train_step, self.seed = train_step, seed

    def init(self, state: steps.TrainState) -> TangentState:
        space = StateSpace.of(state)
        t = jax.random.normal(jax.random.key(self.seed), (space.dim,), space.dtype)
        return TangentState(
            **{f: getattr(state, f) for f in ("step", "params", "batch_stats", "opt_state")},
            tangent=t / jnp.linalg.norm(t),
            log_growth=jnp.zeros([], space.dtype),
        )

    def __call__(self, state: TangentState, batch):
        before = plain(state)
        after, metrics = self.train_step(before, batch)
        t = tangent_map(self.train_step, before, batch, state.tangent)
        growth = jnp.linalg.norm(t)
        return TangentState(
            after.step,
            after.params,
            after.batch_stats,
            after.opt_state,
            tangent=(t / growth).astype(state.tangent.dtype),
            log_growth=state.log_growth + jnp.log(growth).astype(state.log_growth.dtype),
        ), metrics


def tangent_step(seed: int = 0, make_step=steps.make_train_step):
    """A make_step for the Ensemble whose steps carry a tangent (TangentStep)."""
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"tangent seed={seed!r} must be an integer >= 0")

    @functools.wraps(make_step)
    def make(model, tx, loss="cross_entropy", **options):
        return TangentStep(make_step(model, tx, loss, **options), seed)

    return make


class Lyapunov(Observer):
    """For each member whose state carries a tangent (kind 'lyapunov'): log_growth since
    step 0 and exponent = log_growth / step, the running finite-time exponent per step
    (None at step 0). `read` adds window_exponent: the growth since the member's previous
    record over its steps (NaN at the first)."""

    at_start = True
    kind = "lyapunov"
    fields = record_fields("log_growth", "exponent")

    def __init__(self, every_steps: int):
        self.every_steps = every_steps

    def setup(self, ensemble, num_steps: int) -> None:
        self.check_every_steps("lyapunov")
        if not any(isinstance(s, TangentStep) for s in ensemble.train_steps):
            raise ValueError("the Lyapunov observer needs a member with a tangent_step")

    def __call__(self, run) -> None:
        for i, (m, s) in enumerate(zip(run.ensemble.members, run.members(), strict=True)):
            if not isinstance(s, TangentState):
                continue
            step, log_growth = int(s.step), float(s.log_growth)
            run.write(
                {
                    "step": run.step,
                    "member": i,
                    "label": m.label,
                    "kind": self.kind,
                    "log_growth": log_growth,
                    "exponent": log_growth / step if step else None,
                }
            )

    @classmethod
    def read(cls, records):
        series = read_series(records, cls.kind, cls.fields)
        log_growth = series["log_growth"]
        window = np.full_like(log_growth, np.nan)
        for i, row in enumerate(log_growth):
            at = np.flatnonzero(~np.isnan(row))
            window[i, at[1:]] = np.diff(row[at]) / np.diff(series.steps[at])
        return type(series)(series.steps, {**series.values, "window_exponent": window})

    def summarize(self, records, summary) -> None:
        exponents = self.read(records)["exponent"]  # rows: members up to the last with a tangent
        for i, row in enumerate(exponents):
            row = row[~np.isnan(row)]
            if row.size:
                summary.members[i].lyapunov_exponent = float(row[-1])


def restraint(distance: np.ndarray, log_growth: np.ndarray, start: int, end: int) -> float | None:
    """The restraint factor of a twin pair over records start..end: D(end) / (D(start)
    exp(L(end) - L(start))), their distance against the linearised growth of the same
    stretch (< 1: the nonlinearity held the difference back; > 1: it grew faster, by fresh
    rounding or a switch); None where there is no stretch (end <= start) or D(start) = 0."""
    if end <= start or not distance[start] > 0:
        return None
    growth = np.exp(log_growth[end] - log_growth[start])
    return float(distance[end] / (distance[start] * growth))
