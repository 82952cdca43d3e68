"""The training step as a map U on the whole state, its exact linearisation dU, and what
follows from it: the spectral radius of dU and the stability thresholds.

U(state) = train_step(state, batch)[0] acts on parameters, the momentum buffer and the
BatchNorm running statistics together. `jax.jvp` gives dU(state) t exactly (no finite
differences); integer leaves (step counters, the perturbation k) get float0 tangents.
Tangents are flat vectors over the floating leaves of the state (analysis.flat.StateSpace).
`tangent_map` is the one place the step is linearised: the update map's products here and
the tangent-carrying step of analysis.lyapunov (Lyapunov exponents along training) use it.

Stability of one eigenmode of the total Hessian with curvature h = lambda + wd under
PyTorch-style SGD (derivation in docs/curvature.md), with a = lr * h:

    GD              stable iff 0 < a < 2
    heavy ball mu   stable iff 0 < a < 2 + 2 mu
    Nesterov mu     stable iff 0 < a < (2 + 2 mu) / (1 + 2 mu)

Batches always enter jitted functions as arguments (closing over data lets XLA
constant-fold convolutions of it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eos_jax.analysis.flat import StateSpace
from eos_jax.training import steps
from eos_jax.training.observers import Observer, record_fields

OPTIMIZERS = ("gd", "heavy_ball", "nesterov")


# --------------------------------------------------------------------------------------
# The update map and its linearisation
# --------------------------------------------------------------------------------------


def _new_state(train_step, state, batch):
    out = train_step(state, batch)
    return out[0] if isinstance(out, tuple) else out


def tangent_map(train_step: Callable, state, batch, tangent: jax.Array) -> jax.Array:
    """dU(state) t, exactly (jax.jvp): a flat tangent of the state -> a flat tangent of
    U(state). Traceable; jit it where it is used."""
    space = StateSpace.of(state)
    new_state, out = jax.jvp(
        lambda s: _new_state(train_step, s, batch), (state,), (space.unflatten(tangent),)
    )
    return StateSpace.of(new_state).flatten(out)


@functools.cache
def _jitted_map(train_step):
    return jax.jit(functools.partial(_new_state, train_step))


@functools.cache
def _jitted_tangent_map(train_step):
    return jax.jit(functools.partial(tangent_map, train_step))


class UpdateMap:
    """U(state) = train_step(state, batch)[0] for one fixed batch, and its exact JVP.

    train_step: the pure (state, batch) -> (state, metrics) function (not jitted: it is
    jitted here, with the batch an argument of the compiled function).
    """

    def __init__(self, train_step: Callable, batch):
        self.train_step = train_step
        self.batch = batch

    def __call__(self, state):
        return _jitted_map(self.train_step)(state, self.batch)

    def jvp(self, state, tangent: jax.Array) -> jax.Array:
        """dU(state) t for a flat tangent t of shape (dim,)."""
        space = StateSpace.of(state)
        t = jnp.asarray(tangent)
        if t.shape != (space.dim,):
            raise ValueError(f"tangent has shape {t.shape}; the state has ({space.dim},) floats")
        return _jitted_tangent_map(self.train_step)(state, self.batch, t.astype(space.dtype))

    def linear_operator(self, state) -> Callable[[jax.Array], jax.Array]:
        """t -> dU(state) t on flat vectors (the state is fixed)."""
        return lambda t: self.jvp(state, t)


def update_map(train_step: Callable, batch) -> UpdateMap:
    """The training step as a map on the whole state, for one fixed batch."""
    return UpdateMap(train_step, batch)


# --------------------------------------------------------------------------------------
# Spectral radius of dU (not symmetric once momentum is on)
# --------------------------------------------------------------------------------------


class SpectralRadius(NamedTuple):
    """radius = |eigenvalue|; eigenvalue (complex) of largest modulus found; residual: the
    Arnoldi estimate ||dU x - eigenvalue x|| (x unit); num_jvps: products used."""

    radius: float
    eigenvalue: complex
    residual: float
    num_jvps: int


def spectral_radius(
    jvp: Callable[[jax.Array], jax.Array],
    dim: int,
    num_iters: int = 50,
    tol: float = 1e-10,
    init=None,
    seed: int = 0,
) -> SpectralRadius:
    """Largest |eigenvalue| of a (non-symmetric) linear map given by products, by Arnoldi:
    a Krylov basis with full reorthogonalisation, eigenvalues of the Hessenberg matrix;
    handles complex pairs (momentum)."""
    if not (isinstance(num_iters, int) and num_iters >= 1):
        raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}")
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    dtype = jnp.result_type(float)
    v = (
        jax.random.normal(jax.random.key(seed), (dim,), dtype)
        if init is None
        else jnp.asarray(init, dtype)
    )
    v = np.asarray(v, np.float64)
    return _arnoldi(jvp, v, min(num_iters, dim), tol)


def _arnoldi(jvp, v, m, tol):
    n = v.shape[0]
    Q = np.zeros((m + 1, n))
    Hs = np.zeros((m + 1, m))
    Q[0] = v / np.linalg.norm(v)
    used = 0
    best = (0.0, 0.0j, float("inf"))
    for j in range(m):
        w = np.asarray(jvp(jnp.asarray(Q[j])), np.float64)
        used += 1
        for _ in range(2):  # reorthogonalise twice
            c = Q[: j + 1] @ w
            w = w - Q[: j + 1].T @ c
            Hs[: j + 1, j] += c
        Hs[j + 1, j] = np.linalg.norm(w)
        evals, evecs = np.linalg.eig(Hs[: j + 1, : j + 1])
        i = int(np.argmax(np.abs(evals)))
        # Ritz residual of the pair: |h_{j+1,j}| |last component of the unit Ritz vector|
        residual = float(Hs[j + 1, j] * abs(evecs[-1, i]) / np.linalg.norm(evecs[:, i]))
        best = (float(abs(evals[i])), complex(evals[i]), residual)
        scale = max(float(np.abs(Hs[: j + 2, : j + 1]).max()), 1e-300)
        if Hs[j + 1, j] <= 1e-14 * scale or residual <= tol * max(best[0], 1e-300):
            break
        Q[j + 1] = w / Hs[j + 1, j]
    return SpectralRadius(best[0], best[1], best[2], used)


# --------------------------------------------------------------------------------------
# Analytic thresholds
# --------------------------------------------------------------------------------------


def _check_optimizer(kind, lr, mu, weight_decay):
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {kind!r}; allowed: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if kind == "gd" and mu != 0:
        raise ValueError(f"kind 'gd' has no momentum; got mu={mu!r} (use 'heavy_ball')")
    if kind != "gd" and not 0 <= mu < 1:
        raise ValueError(f"momentum mu must be in [0, 1), got {mu!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


def critical_lr_curvature(kind: str, mu: float = 0.0) -> float:
    """The bound c on a = lr * (lambda + wd): 2, 2 + 2 mu, or (2 + 2 mu) / (1 + 2 mu)."""
    _check_optimizer(kind, 1.0, mu, 0.0)
    if kind == "gd":
        return 2.0
    if kind == "heavy_ball":
        return 2.0 + 2.0 * mu
    return (2.0 + 2.0 * mu) / (1.0 + 2.0 * mu)


def stability_threshold(kind: str, lr: float, mu: float = 0.0, weight_decay: float = 0.0) -> float:
    """The largest data-loss sharpness lambda_max for which the step is linearly stable:
    c / lr - wd (the L2 term adds wd to every eigenvalue). Below it: stable (given all
    lambda + wd > 0); above it: the top mode grows."""
    _check_optimizer(kind, lr, mu, weight_decay)
    return critical_lr_curvature(kind, mu) / lr - weight_decay


# --------------------------------------------------------------------------------------
# The edge mode: one stability number for every optimiser
# --------------------------------------------------------------------------------------


class EdgeMode(NamedTuple):
    """eigenvalue: mu, the eigenvalue of dU farthest from 1; radius: |mu| (< 1: the step is
    linearly stable in that mode, 1: at the edge, > 1: unstable); residual: Arnoldi's
    estimate for the shifted pair; num_jvps: products used."""

    eigenvalue: complex
    radius: float
    residual: float
    num_jvps: int


def edge_mode(
    update: UpdateMap, state, num_iters: int = 30, tol: float = 1e-3, seed: int = 0
) -> EdgeMode:
    """The eigenvalue mu of dU(state) farthest from 1 (Arnoldi on dU - I), and |mu|.

    Why not the plain spectral radius: directions of (near) zero curvature have mu ~ 1, so
    rho(dU) ~ 1 at every step of an overparameterised net. The linear instability of
    gradient descent is a mode leaving the unit circle away from 1: mu = 1 - lr (lambda +
    wd) crossing -1 for GD, a root of the momentum companion matrix crossing the circle for
    heavy ball and Nesterov (docs/curvature.md). So |mu| is one number with one threshold,
    1, for GD, heavy ball, Nesterov and coupled weight decay: the three formulas and the
    shift by wd are all its crossing. (A mode with negative curvature larger than the top
    one also has mu far from 1, above it: an escape, not the edge; eigenvalue.real > 1 says
    which.)
    """
    dim = StateSpace.of(state).dim
    product = update.linear_operator(state)
    shifted = spectral_radius(lambda t: product(t) - t, dim, num_iters, tol, seed=seed)
    mu = shifted.eigenvalue + 1
    return EdgeMode(complex(mu), float(abs(mu)), shifted.residual, shifted.num_jvps)


class EdgeRadius(Observer):
    """Every `every_steps` steps (and at steps 0 and the last), for each member: the edge
    mode of its training step at the current state and the batch of the next step
    (`edge_mode`; kind 'edge_mode': radius, eigenvalue_real, eigenvalue_imag, residual,
    num_jvps). Members whose step carries extra state (e.g. a tangent) are refused."""

    at_start = True
    kind = "edge_mode"
    fields = record_fields("radius", "eigenvalue_real", "eigenvalue_imag", "num_jvps")

    def __init__(self, every_steps: int, num_iters: int = 30, tol: float = 1e-3):
        self.every_steps, self.num_iters, self.tol = every_steps, num_iters, tol

    def setup(self, ensemble, num_steps: int) -> None:
        self.check_every_steps("edge radius")
        if not (isinstance(self.num_iters, int) and self.num_iters >= 2):
            raise ValueError(f"edge radius num_iters={self.num_iters!r} must be an integer >= 2")
        if not 0 < self.tol < 1:
            raise ValueError(f"edge radius tol={self.tol!r} must be in (0, 1)")
        if any(steps.carries_state(step) for step in ensemble.train_steps):
            raise ValueError("edge radius: a member's step carries extra state; use plain steps")

    def __call__(self, run) -> None:
        ensemble, values = run.ensemble, []
        for i, state in enumerate(run.members()):
            batch = ensemble.streams[ensemble.stream_of[i]].batch(run.step)
            update = update_map(ensemble.train_steps[i], batch)
            mode = edge_mode(update, state, self.num_iters, self.tol, seed=i)
            values.append(
                {
                    "radius": mode.radius,
                    "eigenvalue_real": mode.eigenvalue.real,
                    "eigenvalue_imag": mode.eigenvalue.imag,
                    "residual": mode.residual,
                    "num_jvps": mode.num_jvps,
                }
            )
        self.write(run, values)
