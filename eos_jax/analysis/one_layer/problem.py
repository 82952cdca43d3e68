"""The one-layer problem: the checkerboard input, the initial kernel, the loss and its PDE.

p = mean_x s((K * I)(x)), s(z) = z sigmoid(beta z); loss = BCE(sigmoid(p), y) + (alpha/2)|K|^2.
The gradient flow is dK/dt(y) = -a(K) mean_x[s'((K * I)(x)) I(x + y)] - alpha K(y) with
a = sigmoid(p) - y (tests/test_theory.py checks autodiff's gradient against it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from eos_jax.models.one_layer import OneLayerConv, valid_correlation_fft


def checkerboard(size: int = 256) -> np.ndarray:
    """The paper's input: +1 where i + j is even, -1 elsewhere (float64).

    This phase gives the equilibrium loss 0.29149 of docs/paper.md, section 4; the other
    phase breaks the tie between the 25313 and 25312 positions of each sign the other way
    (loss 0.29150).
    """
    i = np.arange(size)
    return np.where((i[:, None] + i[None, :]) % 2 == 0, 1.0, -1.0)


def initial_kernel(size: int = 32, seed: int = 7, std: float = 1.0) -> np.ndarray:
    """std * randn(size, size) from NumPy's legacy generator (the paper's seed 7)."""
    return std * np.random.RandomState(seed).randn(size, size)


@functools.cache
def _model(kernel_size: int, beta: float) -> OneLayerConv:
    return OneLayerConv(
        kernel_size=kernel_size,
        beta=beta,
        correlation="fft",
        dtype=jnp.float64,
        param_dtype=jnp.float64,
    )


def responses(kernel, image):
    """z(x) = (K * I)(x) over the valid positions."""
    return valid_correlation_fft(image[None], kernel)[0]


jitted_responses = jax.jit(responses)


def logit(kernel, image, beta: float = 1.0):
    """p = mean_x s((K * I)(x)), computed by the project's OneLayerConv model."""
    return _model(kernel.shape[0], beta).apply({"params": {"kernel": kernel}}, image[None])[0]


def data_loss(kernel, image, beta: float = 1.0, label=1.0):
    """Binary cross-entropy of sigmoid(p) against the label: softplus(p) - y p."""
    p = logit(kernel, image, beta)
    return jax.nn.softplus(p) - label * p


def loss(kernel, image, alpha, beta: float = 1.0, label=1.0):
    """The paper's objective: data loss + (alpha/2) ||K||^2."""
    return data_loss(kernel, image, beta, label) + 0.5 * alpha * jnp.sum(kernel**2)


def hvp(kernel, direction, image, alpha, beta: float = 1.0, label=1.0):
    """Hessian of the loss (weight decay included) times a direction, by forward-over-reverse."""

    def grad(k):
        return jax.grad(loss)(k, image, alpha, beta, label)

    return jax.jvp(grad, (kernel,), (direction,))[1]


@functools.partial(jax.jit, static_argnames=("beta",))
def curvature_along(kernel, direction, image, alpha, beta: float = 1.0, label=1.0):
    """d.H(K).d / d.d: the loss's curvature at K along d (the 'lambda' seen by a step along d)."""
    hd = hvp(kernel, direction, image, alpha, beta, label)
    return jnp.vdot(direction, hd) / jnp.vdot(direction, direction)


jitted_loss = jax.jit(loss, static_argnames=("beta",))
