"""Adam / AdamW (optim.adam): the perturbed update changes only the rounding; the recipe's
fields are validated; on a quadratic the preconditioned sharpness (analysis.adaptive) and
the whole-state update map's edge mode (linearisation) give their closed forms.

The quadratic is test_linearisation's: linear regression with MSE, Hessian Sigma (x) I_2."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eos_jax import bits, recipe
from eos_jax.analysis import adaptive, curvature
from eos_jax.analysis import linearisation as lin
from eos_jax.studies import eos
from eos_jax.training import optim, steps, trainer
from experiments.configs import eos_digits
from tests.test_linearisation import Linear, to_f64


def run_adam(tx, num_steps=5):
    """Parameters after a few steps of tx on a fixed stream of gradients (float32)."""
    keys = jax.random.split(jax.random.key(0), num_steps + 1)
    params = {"w": jax.random.normal(keys[0], (64,)), "b": jax.random.normal(keys[0], (3, 5))}
    state = tx.init(params)
    for key in keys[1:]:
        grads = jax.tree.map(lambda p, k=key: jax.random.normal(k, p.shape) + 0.1 * p, params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize(
    "plain, decoupled",
    [
        (optax.chain(optax.add_decayed_weights(0.01), optax.adam(1e-2)), False),
        (optax.adamw(1e-2, weight_decay=0.01), True),
    ],
    ids=["adam", "adamw"],
)
def test_perturbed_adam_changes_only_the_rounding(plain, decoupled):
    reference = bits.tree_hash(run_adam(plain))
    for k in (1, 2, 4):
        tx = optim.adam(1e-2, weight_decay=0.01, decoupled=decoupled, k=k)
        assert bits.tree_hash(run_adam(tx)) == reference, k
    # k = 3: the first update differs from plain Adam's by at most 2 ulps, on some entries
    g = jax.random.normal(jax.random.key(0), (4096,))

    def first_update(k):
        tx = optim.adam(1e-2, weight_decay=0.01, decoupled=decoupled, k=k)
        return np.asarray(jax.jit(tx.update)(g, tx.init(g), g)[0])

    assert np.array_equal(first_update(1), first_update(4))
    ulps = bits.ulp_distance(first_update(3), first_update(1))
    assert 0 < ulps.max() <= 2


def test_adam_without_bias_correction_is_m_over_sqrt_v_plus_eps():
    g = jnp.array([0.5, -2.0, 1e-3], jnp.float32)
    tx = optim.adam(0.1, beta1=0.9, beta2=0.99, eps=1e-8, bias_correction=False)
    state = tx.init(jnp.zeros(3))
    assert state[0].mu is not state[0].nu  # two buffers: a donated step donates each once
    update = np.asarray(tx.update(g, state, jnp.zeros(3))[0])
    m, v = 0.1 * np.asarray(g), 0.01 * np.asarray(g) ** 2
    np.testing.assert_allclose(update, -0.1 * m / (np.sqrt(v) + 1e-8), rtol=1e-6)
    # and with it, the first step is lr * sign(g) (up to eps)
    tx = optim.adam(0.1, beta1=0.9, beta2=0.99, eps=1e-8)
    update = np.asarray(tx.update(g, tx.init(jnp.zeros(3)), jnp.zeros(3))[0])
    np.testing.assert_allclose(update, -0.1 * np.sign(g), rtol=1e-4)


def test_adam_step_has_a_finite_tangent_where_the_gradient_is_zero():
    """A dead unit: g = 0, so v = 0 and dv = 0; sqrt's tangent there must be 0, not NaN."""
    tx = optim.adam(0.1, eps=1e-8)
    w = jnp.array([1.0, 0.0, 2.0])
    state = tx.init(w)
    _, tangent = jax.jvp(lambda w: tx.update(w, state, w)[0], (w,), (jnp.ones(3),))
    assert np.all(np.isfinite(tangent))
    assert float(tangent[1]) == pytest.approx(-0.1 / 1e-8, rel=1e-6)  # -lr dm_hat / eps


def test_preconditioner_is_sqrt_v_hat_plus_eps():
    g = jnp.array([0.5, -2.0])
    for bias_correction, divisor in ((True, 1 - 0.99**2), (False, 1.0)):
        tx = optim.adam(0.1, beta2=0.99, eps=1e-3, bias_correction=bias_correction)
        state = tx.init(jnp.zeros(2))
        for _ in range(2):
            state = tx.update(g, state, jnp.zeros(2))[1]
        v = (0.01 * 0.99 + 0.01) * np.asarray(g) ** 2
        p = optim.adam_preconditioner(state, 0.99, 1e-3, bias_correction)
        np.testing.assert_allclose(p, np.sqrt(v / divisor) + 1e-3, rtol=1e-6)
    with pytest.raises(ValueError, match="found 0"):
        optim.adam_preconditioner(optim.sgd(0.1).init(jnp.zeros(2)), 0.99, 1e-3)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("name", "rmsprop", "config.optimizer.name='rmsprop'; allowed: sgd, adam, adamw"),
        ("beta1", 1.0, r"config.optimizer.beta1=1.0 must be a number in \[0, 1\)"),
        ("beta2", -0.1, r"config.optimizer.beta2=-0.1 must be a number in \[0, 1\)"),
        ("eps", 0.0, "config.optimizer.eps=0.0 must be a finite number > 0"),
        ("eps", float("inf"), "config.optimizer.eps=inf must be a finite number > 0"),
        ("momentum", 0.9, "config.optimizer.momentum=0.9 is SGD's; with optimizer.name='adam'"),
    ],
)
def test_bad_adam_fields_are_one_line_errors(field, value, message):
    config = recipe.default_recipe()
    config.optimizer.update(name="adam", momentum=0.0, nesterov=False)
    config.optimizer[field] = value
    with pytest.raises(ValueError, match=message):
        recipe.validate(config)


def regression():
    """(model, batch, Sigma, W*): the quadratic problem and its minimiser."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 3)) * np.array([1.0, 0.7, 0.3])
    labels = rng.integers(0, 2, 16)
    Y = np.eye(2)[labels]
    sigma = X.T @ X / len(X)
    return Linear(), {"image": X, "label": labels}, sigma, np.linalg.solve(sigma, X.T @ Y / 16)


def at_minimum(tx, model, w_star, v0, count=10**6):
    """Adam's state at the minimiser: m = 0, v = v0, a late step (bias corrections ~ 1)."""
    state = to_f64(steps.init_state(model, tx, 0, (3,)))
    params = {"Dense_0": {"kernel": jnp.asarray(w_star)}}
    adam_state = optax.ScaleByAdamState(
        jnp.asarray(count, jnp.int32),
        jax.tree.map(jnp.zeros_like, params),
        {"Dense_0": {"kernel": jnp.asarray(v0)}},
    )
    opt_state = (adam_state, *state.opt_state[1:])
    return state.replace(params=params, opt_state=opt_state)


def test_preconditioned_sharpness_on_a_quadratic_is_the_closed_form():
    with jax.enable_x64(True):
        model, batch, sigma, w_star = regression()
        v0 = np.random.default_rng(1).uniform(0.01, 1.0, size=(3, 2))
        tx = optim.adam(0.1, eps=1e-3)
        state = at_minimum(tx, model, w_star, v0)
        p = optim.adam_preconditioner(state.opt_state, 0.999, 1e-3)
        op = curvature.hvp_fn(model, "mse", state.params, {}, [batch])
        top = curvature.top_eigenvalues(
            adaptive.preconditioned(op, op.space.flatten(p)), op.dim, tol=1e-10
        )
        scale = 1 / np.sqrt(np.sqrt(v0) + 1e-3).ravel()  # P frozen: sqrt(v) + eps
        closed = np.linalg.eigvalsh(scale[:, None] * np.kron(sigma, np.eye(2)) * scale)[-1]
        assert top.eigenvalues[0] == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("decay_over_lr", [0.0, 0.25], ids=["adam", "adamw"])
def test_adam_update_map_radius_crosses_one_at_the_closed_form_threshold(decay_over_lr):
    """At the minimiser with m = 0 the step's linearisation over (w, m, v) is, on each mode
    h of P^-1/2 H P^-1/2 (P = sqrt(beta2 v) + eps, the preconditioner the step divides by),
    heavy ball with momentum beta1 and step lr (1 - beta1); v's block is beta2. So the edge
    mode of the whole state leaves the unit circle at lr h_max = (2 + 2 beta1) / (1 - beta1);
    AdamW's decoupled decay wd moves that to (2 - lr wd)(1 + beta1) / (1 - beta1): here
    lr wd = 0.25 at the critical lr, a shift of 12.5%. (With the decay the minimiser is not a
    fixed point, but on a quadratic with m' = 0 the linearisation there is the same map.)"""
    with jax.enable_x64(True):
        model, batch, sigma, w_star = regression()
        v0 = np.random.default_rng(1).uniform(0.01, 1.0, size=(3, 2))
        beta1, beta2, eps = 0.9, 0.999, 1e-3
        scale = 1 / np.sqrt(np.sqrt(beta2 * v0) + eps).ravel()
        h_max = np.linalg.eigvalsh(scale[:, None] * np.kron(sigma, np.eye(2)) * scale)[-1]
        # solve lr h_max (1 - beta1) = (2 - lr wd)(1 + beta1) for lr, with wd = decay_over_lr / lr
        critical = (2 - decay_over_lr) * (1 + beta1) / ((1 - beta1) * h_max)
        wd = decay_over_lr / critical
        assert adaptive.threshold(critical, beta1, wd) == pytest.approx(h_max, rel=1e-12)
        for factor in (0.99, 1.01):
            tx = optim.adam(factor * critical, beta1, beta2, eps, weight_decay=wd, decoupled=True)
            state = at_minimum(tx, model, w_star, v0)
            train_step = steps.make_train_step(model, tx, "mse")
            mode = lin.edge_mode(lin.update_map(train_step, batch), state, tol=1e-12)
            # the top mode's roots move by ~ 1e-2 (2 + 2 beta1) / (1 - beta1) / 4: not rounding
            assert (mode.radius > 1) == (factor > 1), (factor, mode)
            assert mode.eigenvalue.real < 0  # the flip across the minimiser
            if factor < 1:
                # below the edge the top mode's roots are a complex pair of modulus
                # sqrt(beta1 (1 - lr wd)) (the determinant of the 2 x 2 step): heavy ball's
                # roots are complex for a < (1 + sqrt(beta1))^2, 0.9993 of 2 + 2 beta1 at wd = 0
                modulus = np.sqrt(beta1 * (1 - factor * critical * wd))
                assert mode.radius == pytest.approx(modulus, rel=1e-6)


@pytest.mark.slow  # ~15 s: compiles the three observers' programs
def test_adam_eos_sweep_reads_the_preconditioned_sharpness(tmp_path):
    config = eos_digits.get_config("adam")
    config.update_from_flattened_dict(
        {"train_subset": 64, "batch_size": 64, "quiet": True, "eos.size": 64}
    )
    config.update_from_flattened_dict({"eos.chunk_size": 64, "eos.sharpness_every_steps": 5})
    config.model_kwargs.hidden = (16,)
    config.eos.runs = ("optimizer.lr=0.001 num_steps=10",)
    (row,) = eos.execute(config, str(tmp_path))["runs"]
    records = trainer.read_metrics(str(tmp_path / row["name"]))
    measured = adaptive.PreconditionedSharpness.read(records)
    assert measured.steps.tolist() == [5, 10]  # not at step 0, where v = 0
    assert row["optimizer"] == "adam" and row["predicted_threshold"] == pytest.approx(38000)
    plateau = np.median(measured["preconditioned_sharpness"][0])  # steps 5, 10: the last half
    assert row["observed_plateau"] == pytest.approx(plateau)
    assert row["data_sharpness_plateau"] > 0 and np.isfinite(row["edge_radius"])


def test_adamw_sweep_predicts_the_decayed_threshold_and_the_one_without():
    runs = eos.plan(eos_digits.get_config("adamw"))
    assert len(runs) == len(eos_digits.ADAMW_RUNS)
    for run, (lr, wd) in zip(runs, eos_digits.ADAMW_RUNS, strict=True):
        assert run.recipe.optimizer.name == "adamw"
        # 38 / lr lowered by the fraction lr wd / 2, written out
        assert run.predicted == pytest.approx(38 / lr * (1 - lr * wd / 2), rel=1e-12)
        assert run.without_decay == pytest.approx(38 / lr, rel=1e-12)
    # the words: a plateau on the decayed prediction, on 38/lr, or between them
    run = runs[-1]  # lr 0.005, wd 40: 6,840 against 7,600
    assert eos.phase(6845.0, run.predicted, run.without_decay, 50.0) == "edge at c/lr - wd"
    assert eos.phase(7590.0, run.predicted, run.without_decay, 50.0) == "edge at c/lr"
    assert eos.phase(7200.0, run.predicted, run.without_decay, 50.0).startswith("between")
