"""The period of a training orbit, from its iterates: the Orbit observer and orbit_period.

At the edge of stability full-batch GD does not converge to a point: its iterates flip
across a centre (period two), split further (period four, ...) or wander (irregular).
`Orbit(window)` records, at each of the last `window` steps of a run, the projection
u . w of each member's parameters on a fixed random unit direction u (float64, on the
host); `orbit_period` reads the period from the differences u . (w_t - w_{t-1}), which
remove the centre's level and keep its slow drift as a smooth offset.
"""

from __future__ import annotations

import jax
import numpy as np

from eos_jax.training.observers import Observer, record_fields

PERIODS = (1, 2, 4, 8)  # tried in order; none fits: irregular
MIN_LENGTH = 2 * max(PERIODS) + 2  # values orbit_period needs


def orbit_period(series, rtol: float = 0.1, floor: float = 1e-7) -> int | None:
    """The smallest p in PERIODS with the differences y_t = x_t - x_{t-1} of `series`
    repeating after p steps (rms(y_{t+p} - y_t) <= rtol * sqrt(2) rms(y), the value for
    unrelated y), or None (irregular). Period 1: the iterate moves smoothly (no oscillation),
    or by less than `floor` of the series' rms (still)."""
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 1 or x.size < MIN_LENGTH:
        raise ValueError(f"orbit_period needs a 1-D series of >= {MIN_LENGTH} values")
    y = np.diff(x)
    scale = np.sqrt(np.mean(y**2))
    if scale <= floor * np.sqrt(np.mean(x**2)):
        return 1
    for p in PERIODS:
        if np.sqrt(np.mean((y[p:] - y[:-p]) ** 2)) <= rtol * np.sqrt(2) * scale:
            return p
    return None


def period_label(period: int | None) -> str:
    """A table cell: '1', '2', '4', '8' or 'irregular'."""
    return "irregular" if period is None else str(period)


class Orbit(Observer):
    """u . w at each of the last `window` steps (u a fixed random unit vector, seed 0), per
    member; `read(...)['projection']` gives the series for orbit_period."""

    kind = "orbit"
    fields = record_fields("projection")

    def __init__(self, window: int = 256):
        self.window = window
        self._u = None

    def setup(self, ensemble, num_steps: int) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 20:
            raise ValueError(f"orbit window={self.window!r} must be an integer >= 20")
        self.first = max(1, num_steps - self.window + 1)

    def cadence(self, run) -> dict:
        """Every step from `first` (the last `window` steps of the planned run) on."""
        return {"every_steps": 1, "first_step": self.first}

    def _direction(self, params) -> list[np.ndarray]:
        if self._u is None:
            rng = np.random.default_rng(0)
            u = [rng.standard_normal(np.shape(p)) for p in jax.tree.leaves(params)]
            norm = np.sqrt(sum(float(np.sum(a**2)) for a in u))
            self._u = [a / norm for a in u]
        return self._u

    def __call__(self, run) -> None:
        values = []
        for state in run.members():
            leaves = [np.asarray(p, np.float64) for p in jax.tree.leaves(state.params)]
            u = self._direction(state.params)
            dot = sum(float(np.sum(a * b)) for a, b in zip(u, leaves, strict=True))
            values.append({"projection": dot})
        self.write(run, values)
