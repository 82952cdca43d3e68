"""Known answers for the orbit's period (analysis.orbit) and the phase of an EoS run
(studies.eos.phase, phase_tolerance) on synthetic series."""

import numpy as np
import pytest

from eos_jax.analysis import orbit
from eos_jax.studies import eos

T = np.arange(256)
DRIFT = 1e-4 * T  # the centre's slow drift


@pytest.mark.parametrize(
    "series, period",
    [
        (1.0 - 0.3 * np.exp(-T / 100), 1),  # converging: no oscillation
        (np.full(256, 0.7), 1),  # still
        (DRIFT + 0.05 * (-1.0) ** T, 2),
        (DRIFT + 0.05 * (-1.0) ** T * (1 + 1e-3 * np.sin(T)), 2),  # 0.1% jitter
        (DRIFT + np.tile([0.05, 0.02, -0.04, 0.01], 64), 4),
        (DRIFT + np.random.default_rng(0).standard_normal(256), None),
    ],
    ids=["converging", "still", "two", "two-jittered", "four", "irregular"],
)
def test_orbit_period_gives_the_known_period(series, period):
    assert orbit.orbit_period(series) == period


def test_logistic_map_period_doubling_is_read_from_its_iterates():
    def iterates(r, n=600):
        x = [0.3]
        for _ in range(n):
            x.append(r * x[-1] * (1 - x[-1]))
        return np.array(x[-256:])

    assert [orbit.orbit_period(iterates(r)) for r in (2.8, 3.2, 3.5, 3.9)] == [1, 2, 4, None]
    assert orbit.period_label(None) == "irregular" and orbit.period_label(2) == "2"


def test_orbit_period_refuses_a_short_series():
    with pytest.raises(ValueError, match="1-D series of >= 18 values"):
        orbit.orbit_period(np.zeros(5))


def _window(centre, spread, n=30):
    return centre + spread * np.random.default_rng(1).standard_normal(n)


@pytest.mark.parametrize(
    "centre, spread, wd, expected",
    [
        (2.4002, 1e-4, 0.1, "edge at c/lr - wd"),  # the lr = 0.8 run: 2.4 vs 2.5
        (2.4998, 1e-4, 0.1, "edge at c/lr"),
        (2.45, 1e-4, 0.1, "between c/lr - wd and c/lr"),
        (2.45, 0.1, 0.1, "edge (unresolved)"),  # the spread does not resolve 2.4 from 2.5
        (20.885, 1e-4, 0.01, "edge (unresolved)"),  # the Lanczos tol does not (1e-3 of 20.9)
        (2.0, 1e-4, 0.1, "below the edge"),
        (3.0, 1e-4, 0.1, "above the edge"),
    ],
)
def test_phase_matches_a_prediction_within_the_windows_own_spread(centre, spread, wd, expected):
    predicted = 2.4 if wd == 0.1 else 20.88
    window = _window(centre, spread)
    tolerance = eos.phase_tolerance(window, spread=2.0, floor=1e-4 if wd == 0.1 else 1e-3)
    assert eos.phase(float(np.median(window)), predicted, predicted + wd, tolerance) == expected


def test_phase_tolerance_is_the_robust_spread_or_the_floor():
    window = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert eos.phase_tolerance(window, 2.0, 1e-3) == pytest.approx(2 * 2.0 / 1.349)
    assert eos.phase_tolerance(np.full(5, 10.0), 2.0, 1e-3) == pytest.approx(0.01)
