"""The tangent-carrying step: the state's bits are the plain step's, and the exponent it
accumulates is log rho(dU) on a quadratic loss (closed form in test_linearisation)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax import bits
from eos_jax.analysis import lyapunov
from eos_jax.models import create_model
from eos_jax.studies import lyapunov as experiment
from eos_jax.training import build, optim, steps, trainer
from experiments.configs import lyapunov_mnist1d
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


def tiny_config():
    config = lyapunov_mnist1d.get_config()
    config.update_from_flattened_dict(
        {
            "train_subset": 256,
            "batch_size": 64,
            "num_steps": 8,
            "log_every_steps": 4,
            "eval_every_steps": 4,
            "checkpoint_every_steps": 4,
            "quiet": True,
            "lyapunov.every_steps": 4,
            "lyapunov.lrs": (0.05, 0.1),
        }
    )
    config.model_kwargs.widths = (8, 8)
    return config


def test_experiment_runs_end_to_end_and_resumes_with_the_same_records(tmp_path):
    config = tiny_config()
    summary = experiment.execute(config, str(tmp_path / "all"))
    assert [r["lr"] for r in summary["runs"]] == [0.05, 0.1]
    for row in summary["runs"]:
        assert np.isfinite(row["exponent"]) and row["distance_end"] > 0
        assert row["restraint_end"] > 0
    for name in ("summary.json", "lyapunov.csv", "lyapunov.md", "lyapunov.png"):
        assert os.path.exists(tmp_path / "all" / name)
    # stopped at step 4 and resumed: the tangent and the window records come back exactly
    runs = experiment.plan(config)
    dataset = build.dataset(config)
    t = experiment._trainer(config, runs[0], dataset, str(tmp_path / "split"))
    t.run(stop_at_step=4)
    experiment._trainer(config, runs[0], dataset, str(tmp_path / "split")).run()

    def lyap(sub):
        return lyapunov.Lyapunov.read(trainer.read_metrics(str(sub)))

    split, whole = lyap(tmp_path / "split" / "lr0.05"), lyap(tmp_path / "all" / "lr0.05")
    np.testing.assert_array_equal(split.steps, whole.steps)
    assert split.values.keys() == whole.values.keys()
    for field in whole.values:  # bit for bit (NaN where there is no value, both sides)
        np.testing.assert_array_equal(split[field], whole[field])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lyapunov.lrs", (0.05, -1.0), "positive"),
        ("lyapunov.lrs", (0.05, 0.05), "repeats"),
        ("lyapunov.ks", (1, 3, 5), "two different k values"),
        ("lyapunov.ks", (1, 1), "two different k values"),
        ("lyapunov.lrs", ("a",), "positive learning rates"),
        ("lyapunov.every_steps", 0, "every_steps"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, field, value, message):
    config = tiny_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=message):
        experiment.execute(config, str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")
