"""The tangent-carrying step: the state's bits are the plain step's, and the exponent it
accumulates is log rho(dU) on a quadratic loss (closed form in test_linearisation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax import bits
from eos_jax.analysis import lyapunov
from eos_jax.models import create_model
from eos_jax.training import optim, steps
from tests.test_linearisation import closed_form_radius, regression


def test_state_bits_are_those_of_the_plain_step():
    model = create_model("cnn1d", num_classes=10, widths=(4, 4), kernel_size=3)
    tx = optim.sgd(0.1, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(8, 40, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 8)),
    }
    plain_step = steps.make_train_step(model, tx)
    carrying = lyapunov.tangent_step(seed=1)(model, tx)
    state = steps.init_state(model, tx, 0, (40, 1))
    tangent_state = carrying.init(state)
    plain_jit, carrying_jit = jax.jit(plain_step), jax.jit(carrying)
    for _ in range(5):
        state, m1 = plain_jit(state, batch)
        tangent_state, m2 = carrying_jit(tangent_state, batch)
        assert float(m1["loss"]) == float(m2["loss"])
    assert bits.tree_hash(lyapunov.plain(tangent_state)) == bits.tree_hash(state)
    assert int(tangent_state.step) == 5
    assert float(jnp.linalg.norm(tangent_state.tangent)) == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(float(tangent_state.log_growth))


@pytest.mark.parametrize("kind", ["gd", "heavy_ball"])
def test_exponent_on_a_quadratic_is_log_spectral_radius(kind):
    with jax.enable_x64(True):
        lr, wd, count = 0.3, 0.01, 300
        train_step, state, batch, sigma = regression(kind, lr, wd)
        step = lyapunov.TangentStep(train_step, seed=3)
        s = step.init(state)
        jitted = jax.jit(step)
        for _ in range(count):
            s, _ = jitted(s, batch)
        log_rho = np.log(closed_form_radius(kind, lr, sigma + wd))
        # finite-time error ~ |log c_1| / t (and the oscillation of a complex pair)
        assert float(s.log_growth) / count == pytest.approx(log_rho, abs=0.02)


def test_bad_seed_is_refused():
    with pytest.raises(ValueError, match="tangent seed"):
        lyapunov.tangent_step(seed=-1)
