"""One cadence rule: every observer decides when it runs through observers.itstime, and each
observer's cadence is the one it had when each wrote its own rule."""

import types

import pytest

from eos_jax.analysis import divergence, orbit, regions, response, sharpness
from eos_jax.training import observers
from eos_jax.training.observers import itstime

STEPS = range(0, 41)
RUN = range(0, 31)  # the steps of a 30-step run


def test_itstime_every_n_steps_at_start_and_at_the_last():
    assert [s for s in STEPS if itstime(s, 10)] == [10, 20, 30, 40]
    assert [s for s in STEPS if itstime(s, 10, at_start=True)] == [0, 10, 20, 30, 40]
    assert [s for s in range(0, 26) if itstime(s, 10, at=(25,))] == [10, 20, 25]


def test_itstime_bounds_and_the_step_before():
    assert [s for s in STEPS if itstime(s, 10, last_step=25)] == [10, 20, 25]
    assert [s for s in STEPS if itstime(s, 1, first_step=37)] == [37, 38, 39, 40]
    before = [s for s in STEPS if itstime(s, 10, at_start=True, before=True)]
    assert before == [0, 9, 10, 19, 20, 29, 30, 39, 40]


def run_of(num_steps, end=None):
    return types.SimpleNamespace(num_steps=num_steps, end=num_steps if end is None else end)


@pytest.mark.parametrize("num_steps", [25, 30])
@pytest.mark.parametrize("last_step", [None, 12])
def test_the_default_cadence_is_the_old_rule(num_steps, last_step):
    o = regions.Switches(4, last_step=last_step)
    run = run_of(num_steps)

    def old(step):
        if step == 0:
            return True
        if last_step is not None and step > last_step:
            return False
        return step % 4 == 0 or step in (num_steps, last_step)

    assert [o.due(s, run) for s in STEPS] == [old(s) for s in STEPS]


def test_each_observer_keeps_its_cadence():
    run, early = run_of(30), run_of(30, end=17)  # planned 30 steps, stopped at 17
    ckpt = observers.Checkpoint(None, 10)
    assert [s for s in RUN if ckpt.due(s, early)] == [10, 17, 20, 30]
    assert [s for s in RUN if observers.Evaluate(10).due(s, run)] == [10, 20, 30]
    watch = divergence.WatchTensor("w", 10)
    assert [s for s in range(26) if watch.due(s, run_of(25))] == [0, 10, 20]  # not 25
    sharp = sharpness.Sharpness(10, midpoint=True)
    assert [s for s in RUN if sharp.due(s, run)] == [0, 9, 10, 19, 20, 29, 30]
    assert [s for s in RUN if sharp.measures(s, run)] == [0, 10, 20, 30]
    window = orbit.Orbit(20)
    window.first = max(1, 30 - 20 + 1)  # as setup sets it
    assert [s for s in RUN if window.due(s, run)] == list(range(11, 31))
    linear = response.LinearResponse(5, last_step=12)
    assert [s for s in RUN if linear.due(s, run)] == list(range(0, 13))
    recorded = [s for s in RUN if observers.Observer.due(linear, s, run)]
    assert recorded == [0, 5, 10, 12]
