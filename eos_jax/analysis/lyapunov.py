"""The finite-time maximal Lyapunov exponent of training, measured along an ordinary run.

A tangent-carrying step (`tangent_step`, a make_step for the Ensemble) makes a member's state
a `TangentState`: the TrainState plus a unit tangent over its floating leaves (parameters,
momentum, BatchNorm statistics) and the accumulated log growth. Each step runs the plain
train step (the state's bits are those of the plain run) and one `jax.jvp` of it, then
renormalises the tangent and adds log ||dU t|| to `log_growth` (Benettin with R = 1). The
running exponent is log_growth / steps (per step); the `Lyapunov` observer records it,
with the growth over the last window, for every member that carries a tangent.
"""

from __future__ import annotations

import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from eos_jax import results
from eos_jax.analysis.linearisation import StateSpace
from eos_jax.training import steps
from eos_jax.training.observers import Observer


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
        space = StateSpace.of(before)
        _, out = jax.jvp(
            lambda s: self.train_step(s, batch)[0], (before,), (space.to_tangent(state.tangent),)
        )
        t = StateSpace.of(after).flatten(out)
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
    """For each member whose state carries a tangent (kind 'lyapunov'): log_growth (since
    step 0), exponent = log_growth / step (the running finite-time exponent, per step) and
    window_exponent = the growth since the previous record / its steps (None at step 0)."""

    at_start = True

    def __init__(self, every_steps: int):
        self.every_steps = every_steps
        self._last: dict[int, tuple[int, float]] = {}

    def setup(self, ensemble, num_steps: int) -> None:
        self.check_every_steps("lyapunov")
        if not any(isinstance(s, TangentStep) for s in ensemble.train_steps):
            raise ValueError("the Lyapunov observer needs a member with a tangent_step")
        self._last = {}

    def __call__(self, run) -> None:
        if not self._last and run.step > 0:  # resumed: the previous records are on disk
            self._last = {
                r["member"]: (r["step"], r["log_growth"])
                for r in _read_records(run.trainer.workdir)
            }
        for i, (m, s) in enumerate(zip(run.ensemble.members, run.members(), strict=True)):
            if not isinstance(s, TangentState):
                continue
            step, log_growth = int(s.step), float(s.log_growth)
            previous = self._last.get(i)
            window = (
                (log_growth - previous[1]) / (step - previous[0])
                if previous and step > previous[0]
                else None
            )
            self._last[i] = (step, log_growth)
            run.write(
                {
                    "step": run.step,
                    "member": i,
                    "label": m.label,
                    "kind": "lyapunov",
                    "log_growth": log_growth,
                    "exponent": log_growth / step if step else None,
                    "window_exponent": window,
                }
            )

    def summarize(self, records, summary) -> None:
        for i, member in enumerate(summary["members"]):
            rows = [r for r in records if r.get("kind") == "lyapunov" and r["member"] == i]
            if rows:
                member.update(lyapunov_exponent=rows[-1]["exponent"])


def _read_records(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    rows = results.read_jsonl(path) if os.path.exists(path) else []
    return [r for r in rows if r.get("kind") == "lyapunov"]


def window_exponents(records: list[dict], member: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(steps, exponent over each window ending there) from one member's 'lyapunov' records."""
    rows = [r for r in records if r.get("kind") == "lyapunov" and r["member"] == member]
    return (
        np.array([r["step"] for r in rows[1:]]),
        np.array([r["window_exponent"] for r in rows[1:]], float),
    )
