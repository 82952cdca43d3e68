"""Curvature of the data loss: Hessian-vector products, top eigenvalues, trace and density.

Everything works on one flat parameter vector (the leaves of `params` concatenated in
tree order), so eigensolvers see an ordinary symmetric operator v -> H v of size `dim`.

- `hvp_fn` builds the operator H of the DATA loss (mean over a fixed subset of examples,
  processed in chunks) at the train-mode forward pass: BatchNorm normalises with the
  statistics of each chunk, as in training, and the running statistics are not updated.
  The product is forward-over-reverse (`jax.jvp` of `jax.grad`): about the cost of 1.5-2
  gradients. Coupled L2 weight decay wd adds wd * I, i.e. exactly wd to every eigenvalue;
  it is kept out of H and added by `total_eigenvalues` (or `with_weight_decay`).
- `top_eigenvalues` finds the k largest ALGEBRAIC eigenvalues (not largest magnitude: at the
  start of training a large negative eigenvalue is common) by LOBPCG (jax's
  `lobpcg_standard`, warm-startable with the previous eigenvectors) or by Lanczos with full
  reorthogonalisation. Both report residuals ||Hv - lambda v|| / |lambda| computed here with
  explicit products, and the number of products used.
- `hutchinson_trace` and `slq_density` estimate the trace and the spectral density.

Data always enters jitted functions as arguments: closing over a batch lets XLA
constant-fold the convolutions of it (DESIGN.md, pitfalls).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.sparse.linalg import lobpcg_standard

from eos_jax.training import steps

METHODS = ("lobpcg", "lanczos")


# --------------------------------------------------------------------------------------
# Flat parameter vectors
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """How a pytree of float arrays maps to one flat vector (hashable, so that jitted
    functions can take it as a static argument and compile once per layout).

    Like `jax.flatten_util.ravel_pytree`, but the unravel function is a plain value that
    compares equal across calls, and the flat dtype is the promotion of the leaf dtypes.
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]

    @classmethod
    def of(cls, tree) -> FlatLayout:
        leaves, treedef = jax.tree.flatten(tree)
        for leaf in leaves:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise ValueError(f"FlatLayout needs float leaves, got dtype {leaf.dtype}")
        return cls(
            treedef,
            tuple(tuple(np.shape(x)) for x in leaves),
            tuple(jnp.dtype(x.dtype) for x in leaves),
        )

    @property
    def dim(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes))

    @property
    def dtype(self):
        return jnp.result_type(*self.dtypes) if self.dtypes else jnp.dtype(jnp.float32)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    def ravel(self, tree) -> jax.Array:
        leaves = jax.tree.leaves(tree)
        if not leaves:
            return jnp.zeros((0,), self.dtype)
        return jnp.concatenate([jnp.ravel(x).astype(self.dtype) for x in leaves])

    def unravel(self, flat: jax.Array):
        pieces = jnp.split(flat, np.cumsum(self.sizes)[:-1]) if self.shapes else []
        leaves = [
            p.reshape(s).astype(d) for p, s, d in zip(pieces, self.shapes, self.dtypes, strict=True)
        ]
        return jax.tree.unflatten(self.treedef, leaves)


# --------------------------------------------------------------------------------------
# The Hessian-vector product
# --------------------------------------------------------------------------------------


def chunks(images, labels, chunk_size: int) -> list[dict[str, np.ndarray]]:
    """Splits a fixed subset into batches of `chunk_size` (the last may be smaller), in order."""
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"images and labels differ in length: {n} vs {len(labels)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    return [
        {"image": images[i : i + chunk_size], "label": labels[i : i + chunk_size]}
        for i in range(0, n, chunk_size)
    ]


def _data_loss(model, loss, layout, train, flat_params, batch_stats, images, labels):
    """Mean data loss of one chunk as a function of the flat parameters."""
    variables = {"params": layout.unravel(flat_params)}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if train:
        # mutable: BN uses batch statistics; the updated running averages are dropped.
        logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    else:
        logits = model.apply(variables, images, train=False)
    return steps.loss_fn(loss, logits, labels)


def _chunk_hvp(model, loss, layout, train, flat_params, batch_stats, images, labels, v):
    grad = jax.grad(_data_loss, argnums=4)
    args = (model, loss, layout, train)
    return jax.jvp(
        lambda w: grad(*args, w, batch_stats, images, labels),
        (flat_params,),
        (v.astype(flat_params.dtype),),
    )[1]


def _weighted_sum(per_chunk: Sequence[jax.Array], counts: Sequence[int]) -> jax.Array:
    """Mean over examples: each chunk's mean weighted by its size."""
    total = sum(counts)
    out = per_chunk[0] * (counts[0] / total)
    for value, count in zip(per_chunk[1:], counts[1:], strict=True):
        out = out + value * (count / total)
    return out


@functools.cache
def _jitted_chunk_hvp(model, loss, layout, train):
    return jax.jit(functools.partial(_chunk_hvp, model, loss, layout, train))


@functools.cache
def _jitted_chunk_loss_grad(model, loss, layout, train):
    return jax.jit(jax.value_and_grad(functools.partial(_data_loss, model, loss, layout, train)))


@functools.cache
def _traced_matmat(model, loss, layout, train):
    """(arguments, V (n, k)) -> H V inside a trace; all chunks in one program, columns by vmap."""

    def matmat(arguments, V):
        flat_params, batch_stats, images, labels = arguments
        counts = [int(x.shape[0]) for x in images]
        one = functools.partial(_chunk_hvp, model, loss, layout, train, flat_params, batch_stats)
        per_chunk = [
            jax.vmap(lambda v, x=x, y=y: one(x, y, v), in_axes=1, out_axes=1)(V)
            for x, y in zip(images, labels, strict=True)
        ]
        return _weighted_sum(per_chunk, counts).astype(V.dtype)

    return matmat


class HessianOperator:
    """v -> H v for the data loss over a fixed subset; call it with a flat vector.

    `calls` counts the products computed (each is one pass over every chunk).
    """

    def __init__(self, model, loss, params, batch_stats, batches, train=True):
        if loss not in steps.LOSSES:
            raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(steps.LOSSES)}")
        if not batches:
            raise ValueError("batches is empty: give at least one chunk of examples")
        self.layout = FlatLayout.of(params)
        self.key = (model, loss, self.layout, bool(train))
        self.flat_params = self.layout.ravel(params)
        self.batch_stats = batch_stats
        self.images = [jnp.asarray(b["image"]) for b in batches]
        self.labels = [jnp.asarray(b["label"]) for b in batches]
        self.counts = [int(x.shape[0]) for x in self.images]
        self.calls = 0

    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def dtype(self):
        return self.flat_params.dtype

    @property
    def arguments(self):
        return (self.flat_params, self.batch_stats, self.images, self.labels)

    def __call__(self, v: jax.Array) -> jax.Array:
        v = jnp.asarray(v, self.dtype)
        if v.shape != (self.dim,):
            raise ValueError(f"vector shape {v.shape} does not match the dimension ({self.dim},)")
        self.calls += 1
        fn = _jitted_chunk_hvp(*self.key)
        per_chunk = [
            fn(self.flat_params, self.batch_stats, x, y, v)
            for x, y in zip(self.images, self.labels, strict=True)
        ]
        return _weighted_sum(per_chunk, self.counts)

    def loss_and_gradient(self) -> tuple[jax.Array, jax.Array]:
        """Mean data loss and its flat gradient over the same chunks (for timing and checks)."""
        fn = _jitted_chunk_loss_grad(*self.key)
        results = [
            fn(self.flat_params, self.batch_stats, x, y)
            for x, y in zip(self.images, self.labels, strict=True)
        ]
        value = _weighted_sum([r[0] for r in results], self.counts)
        return value, _weighted_sum([r[1] for r in results], self.counts)


def hvp_fn(
    model, loss: str, params, batch_stats, batches, *, train: bool = True
) -> HessianOperator:
    """The data-loss Hessian at `params` as an operator on flat vectors.

    batches: a list of {'image', 'label'} chunks (see `chunks`) covering the fixed subset;
    the loss is the mean over all their examples. train=True uses the train-mode forward
    pass (BN batch statistics per chunk), as the optimiser sees it.
    """
    return HessianOperator(model, loss, params, batch_stats, batches, train=train)


def with_weight_decay(hvp: Callable, weight_decay: float) -> Callable:
    """v -> H v + wd v: the Hessian of data loss + (wd/2)||w||^2 (coupled L2, as in SGD)."""
    return lambda v: hvp(v) + weight_decay * v


# --------------------------------------------------------------------------------------
# Top eigenvalues
# --------------------------------------------------------------------------------------


class Result(NamedTuple):
    """Top-k eigenpairs, largest first.

    eigenvalues (k,) of the operator given (the data loss for `hvp_fn`); eigenvectors
    (dim, k) orthonormal columns; residuals (k,) = ||H v - lambda v|| / |lambda| from explicit
    products; num_hvps: every product the call made, the residual check included.
    """

    eigenvalues: np.ndarray
    eigenvectors: jax.Array
    residuals: np.ndarray
    num_hvps: int
    iterations: int


def total_eigenvalues(result: Result, weight_decay: float) -> np.ndarray:
    """Eigenvalues of the total loss (data + coupled L2): every one shifts by exactly wd."""
    return np.asarray(result.eigenvalues) + weight_decay


class _Counted:
    """Wraps a flat hvp, counts calls, and gives a traced matmat for LOBPCG."""

    def __init__(self, hvp, dim):
        self.hvp, self.dim, self.calls = hvp, dim, 0
        if isinstance(hvp, HessianOperator):
            self.dtype = hvp.dtype
        else:  # a plain function: the session's default float (float64 under x64)
            probe = jax.ShapeDtypeStruct((dim,), jnp.result_type(float))
            self.dtype = jax.eval_shape(hvp, probe).dtype

    def __call__(self, v):
        self.calls += 1
        return jnp.asarray(self.hvp(v), self.dtype)


@functools.partial(jax.jit, static_argnames=("matmat", "max_iters"))
def _lobpcg(matmat, arguments, X, tol, max_iters):
    """lobpcg_standard with the data as arguments, plus H U for the residual check (in the
    same program: one compilation)."""

    def A(V):
        return matmat(arguments, V)

    theta, U, iterations = lobpcg_standard(A, X, m=max_iters, tol=tol)
    return theta, U, iterations, A(U)


@functools.cache
def _generic_matmat(hvp):
    """matmat for a plain traceable hvp (cached per function, so LOBPCG compiles once)."""

    def matmat(arguments, V):
        del arguments
        return jax.vmap(hvp, in_axes=1, out_axes=1)(V).astype(V.dtype)

    return matmat


def _check_solver_args(dim, k, method, tol, max_iters):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    if not (isinstance(max_iters, int) and max_iters >= 1):
        raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}")
    if method == "lobpcg" and 5 * k >= dim:
        raise ValueError(f"lobpcg needs 5 * k < dim, got k={k}, dim={dim}; use method='lanczos'")
    if method == "lanczos" and k > dim:
        raise ValueError(f"k={k} exceeds the dimension {dim}")


def _start_block(init, dim, k, dtype, seed):
    if init is None:
        return jax.random.normal(jax.random.key(seed), (dim, k), dtype)
    init = jnp.asarray(init, dtype)
    if init.ndim == 1:
        init = init[:, None]
    if init.shape[0] != dim or init.shape[1] > k:
        raise ValueError(f"init has shape {init.shape}; expected ({dim},) or ({dim}, j<={k})")
    if init.shape[1] < k:  # fill the missing directions randomly
        extra = jax.random.normal(jax.random.key(seed), (dim, k - init.shape[1]), dtype)
        init = jnp.concatenate([init, extra], axis=1)
    return init


def _relative_residuals(values, vectors, HV) -> np.ndarray:
    """||H v - lambda v|| / |lambda| per column."""
    r = jnp.linalg.norm(HV - vectors * jnp.asarray(values, vectors.dtype)[None, :], axis=0)
    return np.asarray(r, np.float64) / np.maximum(np.abs(np.asarray(values, np.float64)), 1e-300)


def top_eigenvalues(
    hvp: Callable,
    dim: int,
    k: int = 1,
    method: str = "lobpcg",
    init=None,
    tol: float = 1e-3,
    max_iters: int = 200,
    seed: int = 0,
) -> Result:
    """The k largest algebraic eigenvalues of a symmetric operator given by products.

    hvp: flat vector -> flat vector (a `HessianOperator`, or any traceable function).
    init: previous eigenvectors (dim, j <= k) for a warm start (LOBPCG: the starting
    block; Lanczos: their sum is the starting vector); None starts from a random block.
    tol: target for ||Hv - lambda v|| / |lambda| of every returned pair (reported, not
    guaranteed: the solver stops at max_iters iterations).
    """
    _check_solver_args(dim, k, method, tol, max_iters)
    op = _Counted(hvp, dim)
    if method == "lobpcg":
        return _top_lobpcg(op, dim, k, init, tol, max_iters, seed)
    return _top_lanczos(op, dim, k, init, tol, max_iters, seed)


def _top_lobpcg(op, dim, k, init, tol, max_iters, seed) -> Result:
    X = _start_block(init, dim, k, op.dtype, seed)
    # lobpcg_standard calls a pair converged when ||r|| < tol' * 10 * dim * (lambda + ||Av||).
    # For a top eigenpair lambda ~ ||Av||, so that is ||r|| / lambda < 20 * dim * tol': pass
    # tol' = tol / (20 dim) to ask for our relative residual tol.
    inner_tol = tol / (20.0 * dim)
    if isinstance(op.hvp, HessianOperator):
        matmat, arguments = _traced_matmat(*op.hvp.key), op.hvp.arguments
    else:
        matmat, arguments = _generic_matmat(op.hvp), ()
    theta, U, iterations, HU = _lobpcg(matmat, arguments, X, inner_tol, max_iters)
    iterations = int(iterations)
    # One A(X) before the loop, then per iteration A on [X, P, R] (3k) and on the new X (k);
    # then k for the residual check.
    used = k + 4 * k * iterations + k
    op.calls += used
    if isinstance(op.hvp, HessianOperator):
        op.hvp.calls += used
    order = np.argsort(-np.asarray(theta))
    theta, U, HU = np.asarray(theta)[order], U[:, order], HU[:, order]
    residuals = _relative_residuals(theta, U, HU)
    return Result(theta, U, residuals, op.calls, iterations)


@jax.jit
def _reorthogonalise(Q, w):
    """w minus its projection on the rows of Q (unused rows are zero), twice ("twice is
    enough": classical Gram-Schmidt repeated keeps orthogonality at rounding level)."""
    for _ in range(2):
        w = w - Q.T @ (Q @ w)
    return w


@functools.partial(jax.jit, donate_argnums=0)
def _set_row(Q, j, q):
    return Q.at[j].set(q)


def _lanczos(op: _Counted, q0, steps_max, stop=None, check_every=5):
    """Lanczos with full reorthogonalisation; returns (alphas, betas, Q rows used).

    A Python loop of jitted products (a rolled loop around conv gradients is slow on CPU).
    stop(alphas, betas) is asked every `check_every` steps whether to end early.
    """
    dim = q0.shape[0]
    steps_max = min(steps_max, dim)
    Q = jnp.zeros((steps_max + 1, dim), op.dtype)
    q = q0 / jnp.linalg.norm(q0)
    Q = _set_row(Q, 0, q)
    alphas, betas = [], []
    for j in range(steps_max):
        w = op(q)
        alpha = float(jnp.vdot(q, w))
        w = _reorthogonalise(Q, w)
        beta = float(jnp.linalg.norm(w))
        alphas.append(alpha)
        betas.append(beta)
        # invariant subspace found (beta at rounding level relative to the operator scale)
        scale = max(abs(a) for a in alphas) + max(betas)
        if beta <= 1e3 * float(jnp.finfo(op.dtype).eps) * scale or j + 1 == steps_max:
            break
        if stop is not None and (j + 1) % check_every == 0 and stop(alphas, betas):
            break
        q = w / beta
        Q = _set_row(Q, j + 1, q)
    m = len(alphas)
    return np.array(alphas), np.array(betas), Q[:m]


def _tridiagonal_eig(alphas, betas):
    m = len(alphas)
    T = np.diag(alphas) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
    return np.linalg.eigh(T)


def _top_lanczos(op, dim, k, init, tol, max_iters, seed) -> Result:
    if init is None:
        q0 = jax.random.normal(jax.random.key(seed), (dim,), op.dtype)
    else:
        block = _start_block(
            init, dim, 1 if np.ndim(init) == 1 else np.shape(init)[1], op.dtype, seed
        )
        q0 = jnp.sum(block, axis=1)
    steps_max = max(max_iters, k + 1)

    def converged(alphas, betas):
        if len(alphas) < k:
            return False
        theta, S = _tridiagonal_eig(np.array(alphas), np.array(betas))
        top = slice(len(theta) - k, None)
        # Ritz residual ||H Q s - theta Q s|| = beta_m |s_m| (exact with full reorthogonalisation)
        estimate = betas[-1] * np.abs(S[-1, top]) / np.maximum(np.abs(theta[top]), 1e-300)
        return bool(np.all(estimate < tol / 2))  # margin: the explicit check must pass too

    alphas, betas, Q = _lanczos(op, q0, steps_max, converged)
    theta, S = _tridiagonal_eig(alphas, betas)
    kk = min(k, len(theta))
    idx = np.arange(len(theta) - 1, len(theta) - 1 - kk, -1)
    values = theta[idx]
    vectors = Q.T @ jnp.asarray(S[:, idx], op.dtype)
    vectors = vectors / jnp.linalg.norm(vectors, axis=0, keepdims=True)
    HV = jnp.stack([op(vectors[:, i]) for i in range(kk)], axis=1)  # k explicit products
    residuals = _relative_residuals(values, vectors, HV)
    return Result(values, vectors, residuals, op.calls, len(alphas))


# --------------------------------------------------------------------------------------
# Trace and spectral density
# --------------------------------------------------------------------------------------


class TraceEstimate(NamedTuple):
    trace: float
    standard_error: float
    num_hvps: int


def hutchinson_trace(
    hvp: Callable, dim: int, num_samples: int = 32, seed: int = 0
) -> TraceEstimate:
    """tr H ~ mean of z^T H z over Rademacher z (unbiased; the variance is
    2 * sum of squared off-diagonal entries, smaller than Gaussian z's)."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 (for an error bar), got {num_samples}")
    op = _Counted(hvp, dim)
    keys = jax.random.split(jax.random.key(seed), num_samples)
    values = []
    for key in keys:
        z = jax.random.rademacher(key, (dim,), op.dtype)
        values.append(float(jnp.vdot(z, op(z))))
    values = np.array(values)
    return TraceEstimate(
        float(values.mean()), float(values.std(ddof=1) / np.sqrt(num_samples)), op.calls
    )


class SpectralDensity(NamedTuple):
    """Gaussian-smoothed spectral density on a grid (integrates to ~1 over the grid), and
    the quadrature it came from: nodes (num_samples, m) and weights (each row sums to 1)."""

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    num_hvps: int


def slq_density(
    hvp: Callable,
    dim: int,
    num_samples: int = 4,
    num_steps: int = 40,
    grid_size: int = 500,
    sigma: float | None = None,
    seed: int = 0,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature (Ubaru et al. 2017; Ghorbani et al. 2019).

    For each random unit vector z, m Lanczos steps give T_m = S diag(theta) S^T; the
    measure sum_j S_0j^2 delta(theta_j) is the m-point Gauss quadrature of z's spectral
    measure sum_i (u_i . z)^2 delta(lambda_i), whose mean over z is the density
    (1/dim) sum_i delta(lambda_i). Each node is smoothed by a Gaussian of width sigma
    (default: 1% of the spectral range found).
    """
    if num_samples < 1 or num_steps < 1:
        raise ValueError(f"num_samples and num_steps must be >= 1, got {num_samples}, {num_steps}")
    op = _Counted(hvp, dim)
    keys = jax.random.split(jax.random.key(seed), num_samples)
    nodes, weights = [], []
    m = min(num_steps, dim)
    for key in keys:
        z = jax.random.normal(key, (dim,), op.dtype)
        alphas, betas, _ = _lanczos(op, z, m)
        theta, S = _tridiagonal_eig(alphas, betas)
        pad = m - len(theta)  # early invariant subspace: pad with zero-weight nodes
        nodes.append(np.concatenate([theta, np.full(pad, theta[-1])]))
        weights.append(np.concatenate([S[0, :] ** 2, np.zeros(pad)]))
    nodes, weights = np.array(nodes), np.array(weights)
    lo, hi = nodes.min(), nodes.max()
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    if sigma is None:
        sigma = 0.01 * span
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size)
    gauss = np.exp(-((grid[None, None, :] - nodes[:, :, None]) ** 2) / (2 * sigma**2))
    gauss /= np.sqrt(2 * np.pi) * sigma
    density = np.einsum("sj,sjg->g", weights, gauss) / num_samples
    return SpectralDensity(grid, density, nodes, weights, op.calls)
