"""The update map's exact linearisation, stability thresholds, and the tangent-carrying step's
Lyapunov exponents and restraint factor on a problem where they are known.

All tests run inside `jax.enable_x64(True)`. The quadratic test problem is linear regression
with MSE, full batch: the loss mean_n sum_c (x_n . W_c - y_nc)^2 / 2 has the Hessian
Sigma (x) I_C with Sigma = X^T X / N, so its curvatures are Sigma's eigenvalues (each C
times), and dU of PyTorch-style SGD is known in closed form, mode by mode (written out
here, independently of the library).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax.analysis import linearisation as lin
from eos_jax.analysis import lyapunov
from eos_jax.analysis.flat import StateSpace
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


def mode_roots(kind, lr, h):
    """The eigenvalues of dU in one mode of curvature h: GD 1 - a; heavy ball the roots of
    z^2 - (1 + mu - a) z + mu; Nesterov of z^2 - (1 + mu - a (1 + mu)) z + mu (1 - a), with
    a = lr * h (docs/curvature.md)."""
    mu, a = KINDS[kind][0], lr * h
    if kind == "gd":
        return np.array([1 - a])
    if kind == "heavy_ball":
        return np.roots([1, -(1 + mu - a), mu])
    return np.roots([1, -(1 + mu - a * (1 + mu)), mu * (1 - a)])


def closed_form_radius(kind, lr, curvatures):
    """max over modes of the largest |root|."""
    return max(np.abs(mode_roots(kind, lr, h)).max() for h in curvatures)


@pytest.mark.parametrize("kind", list(KINDS))
def test_spectral_radius_of_dU_matches_closed_form(kind):
    with jax.enable_x64(True):
        lr, wd = 0.3, 0.01
        train_step, state, batch, sigma = regression(kind, lr, wd)
        U = lin.update_map(train_step, batch)
        dim = StateSpace.of(state).dim
        assert dim == (6 if kind == "gd" else 12)  # kernel (3, 2), plus its momentum buffer
        expected = closed_form_radius(kind, lr, sigma + wd)
        # Arnoldi on exact JVPs: the Krylov space is at most 6-dimensional (3 distinct modes,
        # 2 with momentum), so the Ritz values are eigenvalues up to rounding: 1e-10.
        arnoldi = lin.spectral_radius(U.linear_operator(state), dim, num_iters=20)
        assert arnoldi.radius == pytest.approx(expected, rel=1e-10)
        assert arnoldi.num_jvps <= dim


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
            assert bool(sigma[-1] < lin.stability_threshold(kind, lr, mu, wd)) is stable
            dim = StateSpace.of(state).dim
            U = lin.update_map(train_step, batch)
            radius = lin.spectral_radius(U.linear_operator(state), dim, num_iters=20).radius
            # 0.1% from the threshold moves the top mode's radius by >= 0.2% (GD: 2 * 1e-3;
            # momentum: larger, the root moves like 1e-3 (2 + 2 mu) / (1 - mu)): far from
            # rounding
            assert bool(radius < 1) is stable, (factor, radius)
            assert abs(radius - 1) > 1e-3


@pytest.mark.parametrize("kind", list(KINDS))
def test_edge_mode_is_the_root_farthest_from_one_and_crosses_one_at_the_threshold(kind):
    with jax.enable_x64(True):
        wd = 0.01
        _, _, _, sigma = regression(kind, 0.1, wd)
        c = lin.critical_lr_curvature(kind, KINDS[kind][0])  # checked in the test above
        for factor in (0.5, 0.999, 1.001):
            lr = factor * c / (sigma[-1] + wd)
            train_step, state, batch, _ = regression(kind, lr, wd)
            mode = lin.edge_mode(lin.update_map(train_step, batch), state, tol=1e-12)
            roots = np.concatenate([mode_roots(kind, lr, h) for h in sigma + wd])
            farthest = roots[np.argmax(np.abs(roots - 1))]
            # exact JVPs, Krylov space of dimension <= 6: Ritz values exact to rounding
            assert abs(mode.eigenvalue - farthest) < 1e-8, (factor, mode, farthest)
            assert mode.radius == pytest.approx(abs(farthest), rel=1e-8)
            if factor != 0.5:  # 0.1% from the threshold moves |mu| by >= 1e-3: not rounding
                assert (mode.radius < 1) == (factor < 1), (factor, mode.radius)


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
def test_tangent_step_exponent_of_gd_on_a_quadratic(lr):
    with jax.enable_x64(True):
        wd, steps_count = 0.01, 150
        if lr > 2:
            _, _, _, sigma = regression("gd", 1.0, wd)
            lr = lr / (sigma[-1] + wd)
        train_step, state, batch, sigma = regression("gd", lr, wd)
        step = lyapunov.TangentStep(train_step, seed=4)
        s = step.init(state)
        start = np.asarray(s.tangent)
        jitted, running = jax.jit(step), []
        for t in range(1, steps_count + 1):
            s, _ = jitted(s, batch)
            running.append(float(s.log_growth) / t)
        # the tangent evolves as A^t v: compare with numpy on the closed-form
        # dU = I - lr (Sigma (x) I_2 + wd I) (kernel (3, 2) flattened row-major). Both are
        # float64 products of <= 150 well-conditioned 6x6 maps: agree to 1e-10.
        rng = np.random.default_rng(0)
        X = rng.normal(size=(16, 3)) * np.array([1.0, 0.7, 0.3])
        H = np.kron(X.T @ X / 16, np.eye(2)) + wd * np.eye(6)
        A = np.eye(6) - lr * H
        np.testing.assert_allclose(running, exact_power_sequence(A, start, steps_count), rtol=1e-10)
        # the limit: log rho(dU); the finite-time error is log|c_1| / t (c_1 the start's
        # component on the top mode, |log c_1| < 3 for this start) plus a decaying term
        log_rho = np.log(closed_form_radius("gd", lr, sigma + wd))
        assert abs(running[-1] - log_rho) < 3 / steps_count
        assert (running[-1] < 0) == (lr * (sigma[-1] + wd) < 2)


def test_restraint_is_one_for_twins_of_a_linear_map():
    """On the quadratic problem the training map is affine, so twins differ exactly by the
    tangent started along their difference: the restraint factor is 1 (to rounding), and
    it is None where there is no stretch to compare."""
    with jax.enable_x64(True):
        lr = 2.2 / (regression("gd", 1.0, 0.01)[3][-1] + 0.01)  # expanding: the gap grows
        train_step, state, batch, _ = regression("gd", lr, 0.01)
        space = StateSpace.of(state)
        delta = 1e-6 * jax.random.normal(jax.random.key(2), (space.dim,), jnp.float64)
        twin = jax.tree.map(
            lambda x, d: x + d if jnp.issubdtype(x.dtype, jnp.floating) else x,
            state,
            space.unflatten(delta),
        )
        step = lyapunov.TangentStep(train_step)
        carried = step.init(state).replace(tangent=delta / jnp.linalg.norm(delta))
        jitted, plain = jax.jit(step), jax.jit(train_step)
        distance, log_growth = [float(jnp.linalg.norm(delta))], [0.0]
        for _ in range(60):
            carried, _ = jitted(carried, batch)
            twin, _ = plain(twin, batch)
            gap = space.flatten(twin) - space.flatten(lyapunov.plain(carried))
            distance.append(float(jnp.linalg.norm(gap)))
            log_growth.append(float(carried.log_growth))
        distance, log_growth = np.array(distance), np.array(log_growth)
        assert distance[-1] > 10 * distance[0]  # the difference really grew
        # rounding: each run adds ~1e-16 |w| per step against a gap >= 1e-6: ~1e-9 relative
        assert lyapunov.restraint(distance, log_growth, 0, 60) == pytest.approx(1.0, abs=1e-6)
        assert lyapunov.restraint(distance, log_growth, 30, 60) == pytest.approx(1.0, abs=1e-6)
        assert lyapunov.restraint(distance, log_growth, 60, 60) is None
        assert lyapunov.restraint(np.zeros(3), np.zeros(3), 0, 2) is None


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
        space = StateSpace.of(state)
        assert any("batch_stats" in p for p in space.float_slices())
        t = jax.random.normal(jax.random.key(0), (space.dim,), jnp.float64)
        U = lin.update_map(train_step, batch)
        dt = U.jvp(state, t)
        eps = 1e-6
        plus = space.flatten(U(space_shift(space, state, eps * t)))
        minus = space.flatten(U(space_shift(space, state, -eps * t)))
        secant = (plus - minus) / (2 * eps)
        # central difference: truncation O(eps^2) ~ 1e-12, rounding ~1e-16 / eps ~ 1e-10
        np.testing.assert_allclose(dt, secant, rtol=0, atol=1e-6 * np.abs(secant).max())
        assert space.unflatten(t).step.dtype == jax.dtypes.float0
        np.testing.assert_array_equal(U.jvp(state, jnp.zeros_like(t)), 0.0)


def space_shift(space, state, flat):
    """state + flat on the floating leaves (integer leaves unchanged)."""
    tangent = space.unflatten(flat)
    return jax.tree.map(
        lambda x, d: x + d if jnp.issubdtype(x.dtype, jnp.floating) else x, state, tangent
    )


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown optimizer kind 'adam'"):
        lin.stability_threshold("adam", 0.1)
    with pytest.raises(ValueError, match="momentum mu must be in"):
        lin.stability_threshold("heavy_ball", 0.1, mu=1.0)
    with pytest.raises(ValueError, match="lr must be positive"):
        lin.stability_threshold("gd", 0.0)
    with pytest.raises(ValueError, match="kind 'gd' has no momentum"):
        lin.stability_threshold("gd", 0.1, mu=0.9)
