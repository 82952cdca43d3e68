"""The training step as a map U on the whole state, its exact linearisation dU, and what
follows from it: spectral radius, stability verdicts, tangent propagation, Lyapunov
exponents and the "restraint factor" of a perturbed twin.

U(state) = train_step(state, batch)[0] acts on parameters, the momentum buffer and the
BatchNorm running statistics together. `jax.jvp` gives dU(state) t exactly (no finite
differences); integer leaves (step counters, the perturbation k) get float0 tangents.
Tangents are handled as flat vectors over the floating leaves of the state (`StateSpace`).

Stability of one eigenmode of the total Hessian with curvature h = lambda + wd under
PyTorch-style SGD (derivation in docs/curvature.md), with a = lr * h:

    GD              stable iff 0 < a < 2
    heavy ball mu   stable iff 0 < a < 2 + 2 mu
    Nesterov mu     stable iff 0 < a < (2 + 2 mu) / (1 + 2 mu)

Batches always enter jitted functions as arguments (closing over data lets XLA
constant-fold convolutions of it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

OPTIMIZERS = ("gd", "heavy_ball", "nesterov")
SPECTRAL_METHODS = ("arnoldi", "power")


# --------------------------------------------------------------------------------------
# Tangent spaces of a state
# --------------------------------------------------------------------------------------


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def zero_tangent(tree):
    """Zero tangent of a pytree: zeros for float leaves, float0 zeros for integer/bool ones
    (what `jax.jvp` demands for non-differentiable leaves)."""
    return jax.tree.map(
        lambda x: jnp.zeros_like(x) if _is_float(x) else np.zeros(np.shape(x), jax.dtypes.float0),
        tree,
    )


@dataclasses.dataclass(frozen=True)
class StateSpace:
    """The floating leaves of a state pytree as one flat vector (hashable: a static argument).

    `to_tangent(flat)` builds a full tangent pytree (float0 for integer leaves); `flatten`
    takes a state or a tangent pytree back to flat. The flat dtype is the promotion of the
    floating leaves' dtypes (float64 if any leaf is float64).
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    is_float: tuple[bool, ...]
    paths: tuple[str, ...]

    @classmethod
    def of(cls, state) -> StateSpace:
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(state)
        leaves = [leaf for _, leaf in with_paths]
        return cls(
            treedef,
            tuple(tuple(np.shape(x)) for x in leaves),
            tuple(jnp.result_type(x) for x in leaves),
            tuple(_is_float(x) for x in leaves),
            tuple(jax.tree_util.keystr(p) for p, _ in with_paths),
        )

    @property
    def dtype(self):
        floats = [d for d, f in zip(self.dtypes, self.is_float, strict=True) if f]
        return jnp.result_type(*floats) if floats else jnp.dtype(jnp.float32)

    @property
    def dim(self) -> int:
        return int(sum(math.prod(s) for s, f in zip(self.shapes, self.is_float, strict=True) if f))

    def float_slices(self) -> dict[str, slice]:
        """Where each floating leaf sits in the flat vector, by path."""
        out, start = {}, 0
        for path, shape, f in zip(self.paths, self.shapes, self.is_float, strict=True):
            if f:
                size = math.prod(shape)
                out[path] = slice(start, start + size)
                start += size
        return out

    def flatten(self, tree) -> jax.Array:
        leaves = jax.tree.leaves(tree)
        parts = [
            jnp.ravel(x).astype(self.dtype) for x, f in zip(leaves, self.is_float, strict=True) if f
        ]
        return jnp.concatenate(parts) if parts else jnp.zeros((0,), self.dtype)

    def to_tangent(self, flat: jax.Array):
        leaves, start = [], 0
        for shape, dtype, f in zip(self.shapes, self.dtypes, self.is_float, strict=True):
            if f:
                size = math.prod(shape)
                leaves.append(flat[start : start + size].reshape(shape).astype(dtype))
                start += size
            else:
                leaves.append(np.zeros(shape, jax.dtypes.float0))
        return jax.tree.unflatten(self.treedef, leaves)


# --------------------------------------------------------------------------------------
# The update map and its linearisation
# --------------------------------------------------------------------------------------


def _step_state(train_step, state, batch):
    out = train_step(state, batch)
    return out[0] if isinstance(out, tuple) else out


@functools.cache
def _jitted_map(train_step):
    return jax.jit(functools.partial(_step_state, train_step))


@functools.cache
def _jitted_jvp(train_step, space: StateSpace):
    """(state, batch, T (dim, p)) -> (U(state), dU T): one linearisation, p tangent maps.

    jax.linearize evaluates the primal once; the p tangent maps are separate computations
    in one program (vmap over tangents would batch the convolutions into grouped ones,
    measured slower on CPU in DESIGN.md).
    """

    def fn(state, batch, T):
        new_state, linear = jax.linearize(lambda s: _step_state(train_step, s, batch), state)
        out_space = StateSpace.of(new_state)
        cols = [out_space.flatten(linear(space.to_tangent(T[:, i]))) for i in range(T.shape[1])]
        return new_state, jnp.stack(cols, axis=1).astype(T.dtype)

    return jax.jit(fn)


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

    def jvp(self, state, tangents: jax.Array):
        """(U(state), dU(state) T) for flat tangents T of shape (dim,) or (dim, p)."""
        space = StateSpace.of(state)
        T = jnp.asarray(tangents)
        single = T.ndim == 1
        if single:
            T = T[:, None]
        if T.shape[0] != space.dim:
            raise ValueError(f"tangent has {T.shape[0]} rows; the state has {space.dim} floats")
        new_state, out = _jitted_jvp(self.train_step, space)(
            state, self.batch, T.astype(space.dtype)
        )
        return new_state, (out[:, 0] if single else out)

    def linear_operator(self, state) -> Callable[[jax.Array], jax.Array]:
        """t -> dU(state) t on flat vectors (the state is fixed)."""
        return lambda t: self.jvp(state, t)[1]


def update_map(train_step: Callable, batch) -> UpdateMap:
    """The training step as a map on the whole state, for one fixed batch."""
    return UpdateMap(train_step, batch)


# --------------------------------------------------------------------------------------
# Spectral radius of dU (not symmetric once momentum is on)
# --------------------------------------------------------------------------------------


class SpectralRadius(NamedTuple):
    """radius = |eigenvalue|; eigenvalue (complex) of largest modulus found; residual: the
    Arnoldi estimate ||dU x - eigenvalue x|| (x unit), or for power iteration the spread of
    the last growth factors; num_jvps: products used."""

    radius: float
    eigenvalue: complex
    residual: float
    num_jvps: int


def spectral_radius(
    jvp: Callable[[jax.Array], jax.Array],
    dim: int,
    method: str = "arnoldi",
    num_iters: int = 50,
    tol: float = 1e-10,
    init=None,
    seed: int = 0,
) -> SpectralRadius:
    """Largest |eigenvalue| of a (non-symmetric) linear map given by products.

    'arnoldi': Krylov basis with full reorthogonalisation, eigenvalues of the Hessenberg
    matrix; handles complex pairs (momentum). 'power': normalised power iteration; converges
    for a real, simple dominant eigenvalue at rate |lambda_2 / lambda_1| (plain GD).
    """
    if method not in SPECTRAL_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(SPECTRAL_METHODS)}")
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
    if method == "power":
        return _power(jvp, v, num_iters, tol)
    return _arnoldi(jvp, v, min(num_iters, dim), tol)


def _power(jvp, v, num_iters, tol):
    v = v / np.linalg.norm(v)
    growth, sign = [], 1.0
    for _ in range(num_iters):
        w = np.asarray(jvp(jnp.asarray(v)), np.float64)
        g = float(np.linalg.norm(w))
        if g == 0.0:
            return SpectralRadius(0.0, 0.0, 0.0, len(growth) + 1)
        sign = float(np.sign(np.vdot(v, w))) or 1.0
        growth.append(g)
        v = w / g
        if len(growth) >= 3 and np.ptp(growth[-3:]) <= tol * g:
            break
    spread = float(np.ptp(growth[-3:])) if len(growth) >= 3 else float("inf")
    return SpectralRadius(growth[-1], complex(sign * growth[-1]), spread, len(growth))


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
# Analytic thresholds and per-mode companion matrices
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


def is_stable(kind: str, lr: float, lambda_max: float, mu: float = 0.0, weight_decay: float = 0.0):
    """Verdict on the top mode: lr * (lambda_max + wd) < c (see `critical_lr_curvature`)."""
    return bool(lambda_max < stability_threshold(kind, lr, mu, weight_decay))


def companion_matrix(kind: str, lr: float, h: float, mu: float = 0.0) -> np.ndarray:
    """dU restricted to one eigenmode of curvature h = lambda + wd, state (x, buffer).

    GD (1x1): [1 - lr h].  Heavy ball: b' = mu b + h x, x' = x - lr b'.
    Nesterov: b' = mu b + h x, x' = x - lr (h x + mu b').
    """
    _check_optimizer(kind, lr, mu, 0.0)
    a = lr * h
    if kind == "gd":
        return np.array([[1.0 - a]])
    if kind == "heavy_ball":
        return np.array([[1.0 - a, -lr * mu], [h, mu]])
    return np.array([[1.0 - a * (1.0 + mu), -lr * mu * mu], [h, mu]])


def mode_spectral_radius(kind, lr, curvatures, mu: float = 0.0) -> float:
    """max over modes of the companion matrix's spectral radius (closed form of rho(dU)
    on a quadratic loss; curvatures = eigenvalues of the total Hessian)."""
    return max(
        float(np.max(np.abs(np.linalg.eigvals(companion_matrix(kind, lr, float(h), mu)))))
        for h in np.ravel(curvatures)
    )


# --------------------------------------------------------------------------------------
# Tangent propagation, Lyapunov exponents, the restraint factor
# --------------------------------------------------------------------------------------


class TangentPropagator:
    """Carries p tangents alongside the state: (state, T) -> (U(state), dU T), one
    linearisation per step, with QR renormalisation every `renorm_every` steps (Benettin).

    `log_growth` accumulates log |R_ii| over renormalisations; the running finite-time
    exponents are log_growth / steps (per step; divide by lr for per unit of PDE time).
    """

    def __init__(self, train_step: Callable, num_tangents: int = 1, renorm_every: int = 1):
        if not (isinstance(num_tangents, int) and num_tangents >= 1):
            raise ValueError(f"num_tangents must be a positive integer, got {num_tangents!r}")
        if not (isinstance(renorm_every, int) and renorm_every >= 1):
            raise ValueError(f"renorm_every must be a positive integer, got {renorm_every!r}")
        self.train_step = train_step
        self.num_tangents = num_tangents
        self.renorm_every = renorm_every

    def init(self, state, seed: int = 0, tangents=None) -> jax.Array:
        """Orthonormal starting tangents (dim, p): random, or the given ones orthonormalised."""
        space = StateSpace.of(state)
        if tangents is None:
            tangents = jax.random.normal(
                jax.random.key(seed), (space.dim, self.num_tangents), space.dtype
            )
        T = jnp.asarray(tangents, space.dtype).reshape(space.dim, -1)
        if T.shape[1] != self.num_tangents:
            raise ValueError(f"got {T.shape[1]} tangents, expected {self.num_tangents}")
        return jnp.linalg.qr(T)[0]

    def step(self, state, tangents: jax.Array, batch):
        """One training step with the tangents carried along (not renormalised)."""
        space = StateSpace.of(state)
        return _jitted_jvp(self.train_step, space)(state, batch, tangents)

    @staticmethod
    def renormalise(tangents: jax.Array) -> tuple[jax.Array, np.ndarray]:
        """QR: returns orthonormal tangents and log |R_ii| (the growth since the last one)."""
        Q, R = jnp.linalg.qr(tangents)
        d = np.asarray(jnp.diagonal(R), np.float64)
        signs = np.where(d < 0, -1.0, 1.0)
        return Q * jnp.asarray(signs, Q.dtype)[None, :], np.log(np.abs(d))


class LyapunovResult(NamedTuple):
    """exponents (p,): finite-time exponents per step at the end; running (steps, p): the
    running estimate after each step (held between renormalisations); layer_share: squared
    norm fraction of the leading tangent per state tensor, by path (sums to 1)."""

    exponents: np.ndarray
    running: np.ndarray
    layer_share: dict[str, float]
    state: Any
    tangents: jax.Array


def layer_share(state, tangent: jax.Array) -> dict[str, float]:
    """Fraction of ||t||^2 in each floating tensor of the state (params, momentum, BN)."""
    space = StateSpace.of(state)
    t = np.asarray(tangent, np.float64)
    total = float(np.sum(t * t))
    return {p: float(np.sum(t[s] ** 2) / total) for p, s in space.float_slices().items()}


def lyapunov_exponents(
    train_step: Callable,
    state,
    batches: Iterable,
    num_tangents: int = 1,
    renorm_every: int = 1,
    seed: int = 0,
    tangents=None,
) -> LyapunovResult:
    """Finite-time Lyapunov exponents of training along the batches (Benettin's method)."""
    prop = TangentPropagator(train_step, num_tangents, renorm_every)
    T = prop.init(state, seed, tangents)
    log_growth = np.zeros(num_tangents)
    running, since, t = [], 0, 0
    for batch in batches:
        state, T = prop.step(state, T, batch)
        t += 1
        since += 1
        if since == renorm_every:
            T, logs = prop.renormalise(T)
            log_growth += logs
            since = 0
            running.append(log_growth / t)
        else:
            running.append(running[-1] if running else np.full(num_tangents, np.nan))
    if t == 0:
        raise ValueError("batches is empty: need at least one step")
    if since:
        T, logs = prop.renormalise(T)
        log_growth += logs
        running[-1] = log_growth / t
    return LyapunovResult(log_growth / t, np.array(running), layer_share(state, T[:, 0]), state, T)


def ulp_twin(state, leaf_path: str | None = None):
    """A copy of `state` with ONE parameter entry moved by one ulp (np.nextafter toward +inf).

    The entry is the largest-magnitude one of the chosen params leaf (default: the first
    leaf): nonzero and normal, so the change is not flushed to zero. Returns (twin, path,
    index).
    """
    with_paths = jax.tree_util.tree_flatten_with_path(state.params)[0]
    paths = [jax.tree_util.keystr(p) for p, _ in with_paths]
    if leaf_path is None:
        leaf_path = paths[0]
    if leaf_path not in paths:
        raise ValueError(f"unknown params leaf {leaf_path!r}; leaves: {', '.join(paths)}")
    i = paths.index(leaf_path)
    leaf = np.array(with_paths[i][1])
    index = np.unravel_index(int(np.argmax(np.abs(leaf))), leaf.shape)
    if leaf[index] == 0 or not np.isfinite(leaf[index]):
        raise ValueError(f"params leaf {leaf_path!r} has no nonzero finite entry to perturb")
    leaf[index] = np.nextafter(leaf[index], np.array(np.inf, leaf.dtype))
    leaves = [x for _, x in with_paths]
    leaves[i] = jnp.asarray(leaf)
    params = jax.tree.unflatten(jax.tree.structure(state.params), leaves)
    return state.replace(params=params), leaf_path, tuple(int(j) for j in index)


class Restraint(NamedTuple):
    """Per step: actual ||twin - state|| (floating leaves), the linearised prediction
    ||dU...dU (twin_0 - state_0)||, and their ratio (the restraint factor: < 1 when the
    nonlinearity holds the difference back, ~1 while it is linear)."""

    actual: np.ndarray
    linearised: np.ndarray
    ratio: np.ndarray


def restraint_factor(train_step: Callable, state, twin, batches: Iterable) -> Restraint:
    """Runs state and twin on the same batches and a tangent started at their difference.

    The tangent is renormalised every step and its log norm accumulated, so it neither
    overflows nor underflows over long runs.
    """
    space = StateSpace.of(state)
    step = _jitted_map(train_step)
    diff = space.flatten(twin) - space.flatten(state)
    scale0 = float(jnp.linalg.norm(diff))
    if scale0 == 0:
        raise ValueError("twin equals state: no difference to follow")
    T = (diff / scale0)[:, None]
    log_norm = math.log(scale0)
    actual, linearised = [], []
    for batch in batches:
        twin = step(twin, batch)
        state, T = _jitted_jvp(train_step, StateSpace.of(state))(state, batch, T)
        g = float(jnp.linalg.norm(T))
        log_norm += math.log(g)
        T = T / g
        space = StateSpace.of(state)
        actual.append(float(jnp.linalg.norm(space.flatten(twin) - space.flatten(state))))
        linearised.append(math.exp(log_norm))
    actual, linearised = np.array(actual), np.array(linearised)
    return Restraint(actual, linearised, actual / linearised)
