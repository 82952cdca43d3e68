"""Curvature: HVPs and eigensolvers against dense float64 Hessians of tiny models.

Every test runs inside `jax.enable_x64(True)` (the session is fp32 by default), so nothing
leaks into other tests. The reference Hessian is `jax.hessian` of the same data loss written
independently here (with `jax.flatten_util.ravel_pytree`), on the same chunks.

Tolerance for eigenvalues (1e-6 relative): the solvers are run to a relative residual
r = 1e-8; for a symmetric operator the eigenvalue error is at most r^2 |lambda|^2 / gap,
~1e-16 relative here, so 1e-6 leaves room only for a wrong operator, not for rounding.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from eos_jax.analysis import curvature as cv
from eos_jax.models import create_model
from eos_jax.training import optim, steps

F64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}


class TinyBN(nn.Module):
    """Dense -> BatchNorm (batch statistics in train mode) -> tanh -> Dense."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(5, **F64)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, **F64)(x)
        return nn.Dense(3, **F64)(jnp.tanh(x))


@functools.cache
def setup(name, n=20, chunk=7, shape=(2, 2, 1)):
    """Model, params, batch_stats and unequal chunks (7, 7, 6) of a random fixed subset."""
    if name == "mlp":
        model = create_model("mlp", hidden=(6,), num_classes=3, **F64)
    elif name == "cnn":
        model = create_model("small_cnn", widths=(2, 3), num_classes=3, **F64)
        shape = (4, 4, 1)
    else:
        model = TinyBN()
    state = steps.init_state(model, optim.sgd(0.1), 0, shape)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), state.params)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(n, *shape))
    labels = rng.integers(0, 3, n)
    batches = [
        {"image": images[i : i + chunk], "label": labels[i : i + chunk]} for i in range(0, n, chunk)
    ]
    return model, params, state.batch_stats, batches


def dense_hessian(model, params, batch_stats, batches):
    flat, unravel = ravel_pytree(params)
    n = sum(len(b["label"]) for b in batches)

    def loss(w, batch_stats, batches):
        total = 0.0
        for b in batches:
            variables = {"params": unravel(w)}
            if batch_stats:
                variables["batch_stats"] = batch_stats
            logits, _ = model.apply(variables, b["image"], train=True, mutable=["batch_stats"])
            total += len(b["label"]) / n * steps.loss_fn("cross_entropy", logits, b["label"])
        return total

    # jitted (eager jax.hessian takes ~20 s here); data passed as arguments
    return np.asarray(jax.jit(jax.hessian(loss))(flat, batch_stats, batches))


@functools.cache
def exact_hessian(name):
    return dense_hessian(*setup(name))


# The CNN takes the MLP's code path (no BatchNorm) at a larger compile: make test-slow.
@pytest.mark.parametrize("name", ["mlp", pytest.param("cnn", marks=pytest.mark.slow), "bn"])
def test_hvp_and_lanczos_match_dense_hessian(name):
    with jax.enable_x64(True):
        model, params, batch_stats, batches = setup(name)
        H = exact_hessian(name)
        op = cv.hvp_fn(model, "cross_entropy", params, batch_stats, batches)
        v = jax.random.normal(jax.random.key(3), (op.dim,), jnp.float64)
        # one product vs the dense matrix: both are exact derivatives, differing by rounding;
        # the same with the linearisation reused (the default) and recomputed
        atol = 1e-12 * np.abs(H).max()
        np.testing.assert_allclose(op(v), H @ np.asarray(v), rtol=0, atol=atol)
        fresh = cv.hvp_fn(model, "cross_entropy", params, batch_stats, batches, False)
        np.testing.assert_allclose(fresh(v), H @ np.asarray(v), rtol=0, atol=atol)
        exact = np.linalg.eigh(H)[0][::-1]
        result = cv.top_eigenvalues(op, op.dim, k=2, tol=1e-8, max_iters=200)
        np.testing.assert_allclose(result.eigenvalues, exact[:2], rtol=1e-6)
        assert np.all(result.residuals < 1e-8)
        assert result.num_hvps == result.iterations + 2  # + 2 residual checks
        V = np.asarray(result.eigenvectors)
        np.testing.assert_allclose(V.T @ V, np.eye(2), atol=1e-10)


def test_weight_decay_shifts_every_eigenvalue_by_exactly_wd():
    with jax.enable_x64(True):
        model, params, batch_stats, batches = setup("mlp")
        op = cv.hvp_fn(model, "cross_entropy", params, batch_stats, batches)
        data = cv.top_eigenvalues(op, op.dim, k=2, tol=1e-10)
        wd = 0.05
        total = cv.top_eigenvalues(lambda v: op(v) + wd * v, op.dim, k=2, tol=1e-10)
        # same Krylov space (a shift does not change it), so the agreement is at the level
        # of the solver's own convergence: residual 1e-10 -> eigenvalue error ~1e-20
        np.testing.assert_allclose(cv.total_eigenvalues(data, wd), total.eigenvalues, rtol=1e-9)


def test_warm_start_needs_fewer_products_on_a_moved_iterate():
    with jax.enable_x64(True):
        model, params, batch_stats, batches = setup("bn")
        op = cv.hvp_fn(model, "cross_entropy", params, batch_stats, batches)
        first = cv.top_eigenvalues(op, op.dim, k=2, tol=1e-8)
        # a small gradient step: the top eigenvectors move only a little
        _, grad = op.loss_and_gradient()
        moved = op.space.unflatten(op.flat_params - 0.05 * grad)
        op2 = cv.hvp_fn(model, "cross_entropy", moved, batch_stats, batches)
        cold = cv.top_eigenvalues(op2, op2.dim, k=2, tol=1e-8, seed=5)
        warm = cv.top_eigenvalues(op2, op2.dim, k=2, tol=1e-8, init=first[1])
        np.testing.assert_allclose(warm.eigenvalues, cold.eigenvalues, rtol=1e-6)
        assert np.all(warm.residuals < 1e-8)
        assert warm.num_hvps < cold.num_hvps, (warm.num_hvps, cold.num_hvps)


def matrix_operator(eigenvalues, seed=0):
    """A dense symmetric matrix with the given spectrum (random eigenbasis) and its product."""
    n = len(eigenvalues)
    Q = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))[0]
    A = jnp.asarray((Q * np.asarray(eigenvalues)) @ Q.T)
    return A, (lambda v: A @ v)


def test_largest_algebraic_not_largest_magnitude():
    with jax.enable_x64(True):
        spectrum = np.concatenate([[-50.0, 3.0, 2.0], np.linspace(-1, 1, 37)])
        _, hvp = matrix_operator(spectrum)
        result = cv.top_eigenvalues(hvp, 40, k=2, tol=1e-9)
        np.testing.assert_allclose(result.eigenvalues, [3.0, 2.0], rtol=1e-6)


def test_bad_inputs_are_refused():
    with jax.enable_x64(True):
        _, hvp = matrix_operator(np.linspace(0, 1, 10))
        with pytest.raises(ValueError, match="k=11 exceeds the dimension 10"):
            cv.top_eigenvalues(hvp, 10, k=11)
        with pytest.raises(ValueError, match="tol must be in"):
            cv.top_eigenvalues(hvp, 10, tol=0.0)
        with pytest.raises(ValueError, match="k must be a positive integer"):
            cv.top_eigenvalues(hvp, 10, k=0)
        model, params, batch_stats, batches = setup("mlp")
        with pytest.raises(ValueError, match="unknown loss 'hinge'"):
            cv.hvp_fn(model, "hinge", params, batch_stats, batches)
        with pytest.raises(ValueError, match="batches is empty"):
            cv.hvp_fn(model, "cross_entropy", params, batch_stats, [])
