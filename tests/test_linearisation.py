"""The update map's exact linearisation, stability thresholds, Lyapunov exponents, restraint.

All tests run inside `jax.enable_x64(True)`. The quadratic test problem is linear regression
with MSE, full batch: the loss mean_n sum_c (x_n . W_c - y_nc)^2 / 2 has the Hessian
Sigma (x) I_C with Sigma = X^T X / N, so its curvatures are Sigma's eigenvalues (each C
times), and dU of PyTorch-style SGD is known in closed form, mode by mode. The closed forms
here are written out independently of `linearisation.companion_matrix`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax.analysis import linearisation as lin
from eos_jax.models import create_model
from eos_jax.training import optim, steps

F64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
KINDS = {"gd": (0.0, False), "heavy_ball": (0.9, False), "nesterov": (0.9, True)}


class Linear(nn.Module):
    """f(x) = x W (no bias): with MSE, the loss is exactly quadratic in W."""

    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dense(2, use_bias=False, **F64)(x.reshape(x.shape[0], -1))


def to_f64(tree):
    return jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        tree,
    )


def regression(kind, lr, wd=0.01):
    """(train_step, state, batch, Sigma's eigenvalues) for the quadratic problem."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 3)) * np.array([1.0, 0.7, 0.3])  # well separated curvatures
    batch = {"image": X, "label": rng.integers(0, 2, 16)}
    mu, nesterov = KINDS[kind]
    tx = optim.sgd(lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
    model = Linear()
    state = to_f64(steps.init_state(model, tx, 0, (3,)))
    sigma = np.linalg.eigvalsh(X.T @ X / len(X))
    return steps.make_train_step(model, tx, "mse"), state, batch, sigma


def closed_form_radius(kind, lr, curvatures):
    """max over modes of the largest |root|: GD 1 - a; heavy ball z^2 - (1 + mu - a) z + mu;
    Nesterov z^2 - (1 + mu - a (1 + mu)) z + mu (1 - a), with a = lr * h (docs/curvature.md)."""
    mu = KINDS[kind][0]
    radii = []
    for h in curvatures:
        a = lr * h
        if kind == "gd":
            radii.append(abs(1 - a))
        elif kind == "heavy_ball":
            radii.append(np.abs(np.roots([1, -(1 + mu - a), mu])).max())
        else:
            radii.append(np.abs(np.roots([1, -(1 + mu - a * (1 + mu)), mu * (1 - a)])).max())
    return max(radii)


@pytest.mark.parametrize("kind", list(KINDS))
def test_spectral_radius_of_dU_matches_closed_form(kind):
    with jax.enable_x64(True):
        lr, wd = 0.3, 0.01
        train_step, state, batch, sigma = regression(kind, lr, wd)
        U = lin.update_map(train_step, batch)
        dim = lin.StateSpace.of(state).dim
        assert dim == (6 if kind == "gd" else 12)  # kernel (3, 2), plus its momentum buffer
        expected = closed_form_radius(kind, lr, sigma + wd)
        assert lin.mode_spectral_radius(kind, lr, sigma + wd, KINDS[kind][0]) == pytest.approx(
            expected, rel=1e-12
        )
        # Arnoldi on exact JVPs: the Krylov space is at most 6-dimensional (3 distinct modes,
        # 2 with momentum), so the Ritz values are eigenvalues up to rounding: 1e-10.
        arnoldi = lin.spectral_radius(U.linear_operator(state), dim, "arnoldi", num_iters=20)
        assert arnoldi.radius == pytest.approx(expected, rel=1e-10)
        assert arnoldi.num_jvps <= dim


def test_power_iteration_on_gd():
    with jax.enable_x64(True):
        # lr such that the top mode's multiplier 1 - a is near -1.1 and the next ~0.3 in
        # modulus: the error shrinks like (0.3 / 1.1)^(2k), below 1e-10 within 40 steps
        train_step, state, batch, sigma = regression("gd", 1.0, 0.01)
        lr = 2.1 / (sigma[-1] + 0.01)
        train_step, state, batch, sigma = regression("gd", lr, 0.01)
        U = lin.update_map(train_step, batch)
        dim = lin.StateSpace.of(state).dim
        power = lin.spectral_radius(U.linear_operator(state), dim, "power", num_iters=100)
        assert power.radius == pytest.approx(closed_form_radius("gd", lr, sigma + 0.01), rel=1e-10)
        assert power.eigenvalue.real < 0  # the oscillating mode


@pytest.mark.parametrize("kind", list(KINDS))
def test_verdict_flips_at_the_threshold(kind):
    with jax.enable_x64(True):
        wd, mu = 0.01, KINDS[kind][0]
        _, _, _, sigma = regression(kind, 0.1, wd)
        c = {"gd": 2.0, "heavy_ball": 2 + 2 * mu, "nesterov": (2 + 2 * mu) / (1 + 2 * mu)}[kind]
        assert lin.critical_lr_curvature(kind, mu) == pytest.approx(c, rel=1e-15)
        for factor, stable in ((0.999, True), (1.001, False)):
            lr = factor * c / (sigma[-1] + wd)  # lr * (lambda_max + wd) = factor * c
            train_step, state, batch, _ = regression(kind, lr, wd)
            assert lin.is_stable(kind, lr, sigma[-1], mu, wd) is stable
            assert bool(sigma[-1] < lin.stability_threshold(kind, lr, mu, wd)) is stable
            dim = lin.StateSpace.of(state).dim
            U = lin.update_map(train_step, batch)
            radius = lin.spectral_radius(U.linear_operator(state), dim, num_iters=20).radius
            # 0.1% from the threshold moves the top mode's radius by >= 0.2% (GD: 2 * 1e-3;
            # momentum: larger, the root moves like 1e-3 (2 + 2 mu) / (1 - mu)): far from
            # rounding
            assert bool(radius < 1) is stable, (factor, radius)
            assert abs(radius - 1) > 1e-3


def exact_power_sequence(A, v, steps_count):
    """(1/t) log ||A^t v|| / ||v|| for t = 1..steps_count, in numpy."""
    out, log_norm, v = [], 0.0, v / np.linalg.norm(v)
    for t in range(1, steps_count + 1):
        v = A @ v
        g = np.linalg.norm(v)
        log_norm += np.log(g)
        v /= g
        out.append(log_norm / t)
    return np.array(out)


@pytest.mark.parametrize("lr", [0.3, 2.2])  # contracting; expanding (lr * h_max > 2)
def test_lyapunov_exponent_of_gd_on_a_quadratic(lr):
    with jax.enable_x64(True):
        wd, steps_count = 0.01, 150
        if lr > 2:
            _, _, _, sigma = regression("gd", 1.0, wd)
            lr = lr / (sigma[-1] + wd)
        train_step, state, batch, sigma = regression("gd", lr, wd)
        space = lin.StateSpace.of(state)
        start = jax.random.normal(jax.random.key(4), (space.dim, 2), jnp.float64)
        result = lin.lyapunov_exponents(
            train_step, state, [batch] * steps_count, num_tangents=2, tangents=start
        )
        # the first Benettin vector evolves as A^t v: compare with numpy on the closed-form
        # dU = I - lr (Sigma (x) I_2 + wd I) (kernel (3, 2) flattened row-major). Both are
        # float64 products of <= 150 well-conditioned 6x6 maps: agree to 1e-10.
        rng = np.random.default_rng(0)
        X = rng.normal(size=(16, 3)) * np.array([1.0, 0.7, 0.3])
        H = np.kron(X.T @ X / 16, np.eye(2)) + wd * np.eye(6)
        A = np.eye(6) - lr * H
        q0 = np.linalg.qr(np.asarray(start))[0][:, 0]
        np.testing.assert_allclose(
            result.running[:, 0], exact_power_sequence(A, q0, steps_count), rtol=1e-10
        )
        # the limit: log rho(dU); the finite-time error is log|c_1| / t (c_1 the start's
        # component on the top mode, |log c_1| < 3 for this start) plus a decaying term
        log_rho = np.log(closed_form_radius("gd", lr, sigma + wd))
        # the top mode has multiplicity C = 2 (Sigma (x) I_2): both exponents tend to it
        np.testing.assert_array_less(np.abs(result.exponents - log_rho), 3 / steps_count)
        assert (result.exponents[0] < 0) == (lr * (sigma[-1] + wd) < 2)
        assert result.layer_share == {".params['Dense_0']['kernel']": pytest.approx(1.0)}


def test_lyapunov_with_momentum_tends_to_log_rho():
    with jax.enable_x64(True):
        lr, wd = 0.3, 0.01
        train_step, state, batch, sigma = regression("heavy_ball", lr, wd)
        result = lin.lyapunov_exponents(train_step, state, [batch] * 300, renorm_every=3)
        # complex top pair (radius sqrt(mu) here): the finite-time estimate oscillates
        # around log rho with an amplitude ~ 1/t; 300 steps bound it by ~0.02
        log_rho = np.log(closed_form_radius("heavy_ball", lr, sigma + wd))
        assert abs(result.exponents[0] - log_rho) < 0.02
        assert np.isnan(result.running[0, 0]) and not np.isnan(result.running[2, 0])
        share = result.layer_share
        assert set(share) == {
            ".params['Dense_0']['kernel']",
            ".opt_state[1].trace['Dense_0']['kernel']",
        }
        assert sum(share.values()) == pytest.approx(1.0, abs=1e-12)


class TinyBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(4, **F64)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, **F64)(x)
        return nn.Dense(3, **F64)(jnp.tanh(x))


def test_jvp_of_the_whole_state_matches_a_secant():
    """Params, Nesterov buffer and BN running statistics together; integer leaves float0."""
    with jax.enable_x64(True):
        model = TinyBN()
        tx = optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        state = to_f64(steps.init_state(model, tx, 0, (2, 3)))
        train_step = steps.make_train_step(model, tx)
        rng = np.random.default_rng(2)
        batch = {"image": rng.normal(size=(8, 2, 3)), "label": rng.integers(0, 3, 8)}
        state = lin.update_map(train_step, batch)(state)  # a nonzero momentum buffer
        space = lin.StateSpace.of(state)
        assert any("batch_stats" in p for p in space.float_slices())
        t = jax.random.normal(jax.random.key(0), (space.dim,), jnp.float64)
        U = lin.update_map(train_step, batch)
        new_state, dt = U.jvp(state, t)
        eps = 1e-6
        plus = space.flatten(U(space_shift(space, state, eps * t)))
        minus = space.flatten(U(space_shift(space, state, -eps * t)))
        secant = (plus - minus) / (2 * eps)
        # central difference: truncation O(eps^2) ~ 1e-12, rounding ~1e-16 / eps ~ 1e-10
        np.testing.assert_allclose(dt, secant, rtol=0, atol=1e-6 * np.abs(secant).max())
        assert int(new_state.step) == int(state.step) + 1
        zero = lin.zero_tangent(state)
        assert zero.step.dtype == jax.dtypes.float0
        np.testing.assert_array_equal(U.jvp(state, space.flatten(zero))[1], 0.0)


def space_shift(space, state, flat):
    """state + flat on the floating leaves (integer leaves unchanged)."""
    tangent = space.to_tangent(flat)
    return jax.tree.map(
        lambda x, d: x + d if jnp.issubdtype(x.dtype, jnp.floating) else x, state, tangent
    )


def test_restraint_factor_is_one_while_the_difference_is_tiny():
    with jax.enable_x64(True):
        model = create_model("mlp", hidden=(8,), num_classes=3, **F64)
        tx = optim.sgd(0.2, momentum=0.9)
        state = to_f64(steps.init_state(model, tx, 0, (2, 2)))
        train_step = steps.make_train_step(model, tx)
        rng = np.random.default_rng(3)
        batches = [
            {"image": rng.normal(size=(10, 2, 2)), "label": rng.integers(0, 3, 10)}
            for _ in range(15)
        ]
        space = lin.StateSpace.of(state)
        direction = jax.random.normal(jax.random.key(1), (space.dim,), jnp.float64)
        twin = space_shift(space, state, 1e-9 * direction / jnp.linalg.norm(direction))
        r = lin.restraint_factor(train_step, state, twin, batches)
        # difference 1e-9: the nonlinear remainder is O(1e-9) relative, the rounding of the
        # two runs ~1e-16 |w| / 1e-9 ~ 1e-7 relative; 1e-5 bounds both
        np.testing.assert_allclose(r.ratio, 1.0, atol=1e-5)
        # an ulp twin differs in exactly one entry, by one ulp
        ulp, path, index = lin.ulp_twin(state, "['hidden1']['kernel']")
        assert path == "['hidden1']['kernel']" and len(index) == 2
        flat_a, flat_b = np.asarray(space.flatten(state)), np.asarray(space.flatten(ulp))
        changed = np.flatnonzero(flat_a != flat_b)
        assert len(changed) == 1
        assert flat_b[changed[0]] == np.nextafter(flat_a[changed[0]], np.inf)
        r = lin.restraint_factor(train_step, state, ulp, batches[:3])
        assert np.all(np.isfinite(r.ratio)) and np.all(r.actual > 0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown optimizer kind 'adam'"):
        lin.stability_threshold("adam", 0.1)
    with pytest.raises(ValueError, match="momentum mu must be in"):
        lin.stability_threshold("heavy_ball", 0.1, mu=1.0)
    with pytest.raises(ValueError, match="lr must be positive"):
        lin.stability_threshold("gd", 0.0)
    with pytest.raises(ValueError, match="kind 'gd' has no momentum"):
        lin.stability_threshold("gd", 0.1, mu=0.9)
    with pytest.raises(ValueError, match="unknown method 'qr'"):
        lin.spectral_radius(lambda v: v, 3, method="qr")
    with pytest.raises(ValueError, match="num_tangents must be a positive integer"):
        lin.TangentPropagator(lambda s, b: (s, {}), num_tangents=0)
