"""The equilibrium GD reaches, the Hessian there, and the predicted learning-rate thresholds."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.sparse.linalg

from eos_jax.analysis import pde
from eos_jax.analysis.one_layer.problem import hvp, jitted_loss, jitted_responses, loss
from eos_jax.analysis.one_layer.regions import (
    NEUTRAL_RATE_TOL,
    SPAN_RTOL,
    RegionalSpectra,
    regional_spectra,
)

# find_equilibrium accepts a point whose loss gradient (weight decay included) has at most this
# 2-norm. trust-ncg's own gtol (1e-12) is often not met only because the gradient of a mean over
# ~5e4 positions is rounded at ~1e-12 relative, so scipy's `success` flag is not the test; the
# distance to the true minimiser is at most |grad| / lambda_min(H) (lambda_min >= alpha at the
# minimisers seen here), far too small at 1e-6 to move the Hessian's extreme eigenvalues.
EQUILIBRIUM_GRADIENT_TOL = 1e-6


class EquilibriumNotFound(ValueError):
    """find_equilibrium did not reach a stationary point: no local bound can be predicted.

    A ValueError, so that the experiment mains report it as one line: the remedy is in the
    inputs (another alpha, init or more iterations).
    """


def find_equilibrium(
    kernel0, image, alpha: float, beta: float = 1.0, label: float = 1.0, maxiter: int = 500
):
    """A minimiser of the loss reached from kernel0 (Newton-CG with exact Hessian products).

    Returns (K*, |grad L(K*)|). Raises EquilibriumNotFound where the gradient norm exceeds
    EQUILIBRIUM_GRADIENT_TOL: a point that is not stationary would give a wrong local bound.
    """
    pde.require_float64()
    shape = np.shape(kernel0)
    image = jnp.asarray(image, jnp.float64)
    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnames=("beta",))
    hvp_jit = jax.jit(hvp, static_argnames=("beta",))

    def fun(flat):
        value, grad = value_and_grad(jnp.asarray(flat.reshape(shape)), image, alpha, beta, label)
        return float(value), np.asarray(grad).ravel()

    def hessp(flat, direction):
        kernel, d = jnp.asarray(flat.reshape(shape)), jnp.asarray(direction.reshape(shape))
        return np.asarray(hvp_jit(kernel, d, image, alpha, beta, label)).ravel()

    result = scipy.optimize.minimize(
        fun,
        np.asarray(kernel0, np.float64).ravel(),
        jac=True,
        hessp=hessp,
        method="trust-ncg",
        options={"gtol": 1e-12, "maxiter": maxiter},
    )
    gradient_norm = float(np.linalg.norm(fun(result.x)[1]))
    if not gradient_norm <= EQUILIBRIUM_GRADIENT_TOL:
        raise EquilibriumNotFound(
            f"no equilibrium found at alpha={alpha}: |grad| = {gradient_norm:.3g} > "
            f"{EQUILIBRIUM_GRADIENT_TOL:g} after {result.nit} trust-ncg iterations "
            f"({result.message})"
        )
    return result.x.reshape(shape), gradient_norm


def hessian_extreme_eigenvalues(kernel, image, alpha: float, beta: float = 1.0, label: float = 1.0):
    """(smallest, largest) eigenvalue of the loss's Hessian at K, by Lanczos on Hessian products."""
    pde.require_float64()
    shape = np.shape(kernel)
    size = int(np.prod(shape))
    kernel, image = jnp.asarray(kernel, jnp.float64), jnp.asarray(image, jnp.float64)
    hvp_jit = jax.jit(hvp, static_argnames=("beta",))

    def matvec(v):
        d = jnp.asarray(np.asarray(v, np.float64).reshape(shape))
        return np.asarray(hvp_jit(kernel, d, image, alpha, beta, label)).ravel()

    operator = scipy.sparse.linalg.LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    start = np.random.RandomState(0).randn(size)  # fixed start: reproducible eigenvalues
    (low,) = scipy.sparse.linalg.eigsh(operator, k=1, which="SA", v0=start, tol=1e-12)[0]
    (high,) = scipy.sparse.linalg.eigsh(operator, k=1, which="LA", v0=start, tol=1e-12)[0]
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Predicted learning-rate thresholds at weight decay alpha, all computed from model and data.

    weight_decay_lr = 2/alpha bounds the not-activated region, and also every kernel direction
    orthogonal to all image patches (there the loss is alpha/2 |K|^2 exactly, at every K): if
    such directions exist (`free_directions` > 0), lr > 2/alpha must blow up. equilibrium_lr =
    2 / lambda_max(H(K*)) is the local (linear) bound at the equilibrium K* that GD reaches.
    """

    alpha: float
    weight_decay_lr: float
    activated_lr: float
    transitioning_lr: float
    equilibrium_lr: float
    equilibrium_loss: float
    equilibrium_hessian: tuple[float, float]
    equilibrium_response: float  # max |(K* * I)(x)|
    equilibrium_gradient_norm: float  # |grad L(K*)| <= EQUILIBRIUM_GRADIENT_TOL
    free_directions: int

    def predicted_class(self, lr: float) -> str:
        """converging below the local bound, blow-up above 2/alpha, restrained between; neutral
        where there are free directions and their factor |1 - lr*alpha| is within
        NEUTRAL_RATE_TOL of 1 (as classify_run observes it)."""
        if self.free_directions > 0 and abs(lr * self.alpha - 2) <= NEUTRAL_RATE_TOL:
            return "neutral"
        if lr > self.weight_decay_lr:
            return "blow-up" if self.free_directions > 0 else "unstable"
        return "converging" if lr < self.equilibrium_lr else "restrained"


def predicted_thresholds(
    kernel0,
    image,
    alpha: float,
    beta: float = 1.0,
    label: float = 1.0,
    spectra: RegionalSpectra | None = None,
) -> Thresholds:
    """Regional bounds (Table 3) and the local bound at the equilibrium reached from kernel0."""
    image = np.asarray(image, np.float64)
    if spectra is None:
        spectra = regional_spectra(image, np.shape(kernel0), beta, label)
    lrs = spectra.max_stable_lrs(alpha)
    equilibrium, gradient_norm = find_equilibrium(kernel0, image, alpha, beta, label)
    low, high = hessian_extreme_eigenvalues(equilibrium, image, alpha, beta, label)
    eq_image = jnp.asarray(image)
    rank = int(np.sum(spectra.gram_eigenvalues > SPAN_RTOL * spectra.gram_eigenvalues.max()))
    return Thresholds(
        alpha=float(alpha),
        weight_decay_lr=lrs["not_activated"],
        activated_lr=lrs["activated"],
        transitioning_lr=lrs["transitioning"],
        equilibrium_lr=pde.max_stable_dt([low, high]),
        equilibrium_loss=float(jitted_loss(jnp.asarray(equilibrium), eq_image, alpha, beta, label)),
        equilibrium_hessian=(low, high),
        equilibrium_response=float(
            np.max(np.abs(jitted_responses(jnp.asarray(equilibrium), eq_image)))
        ),
        equilibrium_gradient_norm=gradient_norm,
        free_directions=spectra.gram_eigenvalues.size - rank,
    )
