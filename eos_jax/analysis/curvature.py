"""Curvature of the data loss: Hessian-vector products and the top eigenvalues.

Everything works on one flat parameter vector (analysis.flat.StateSpace of the params), so
the eigensolver sees an ordinary symmetric operator v -> H v of size `dim`.

- `hvp_fn` builds the operator H of the DATA loss (mean over a fixed subset of examples,
  `train_chunks`, processed in chunks) at the train-mode forward pass, steps.train_mode_loss:
  BatchNorm normalises with the statistics of each chunk, as in training, and the running
  statistics are not updated. The product is forward-over-reverse: by default each chunk's
  gradient map is linearised once at the point (`jax.linearize`, ~0.5 gradient) and every
  product reuses it (about 1.1-1.6 gradients each instead of ~2 for a fresh `jax.jvp` of
  `jax.grad`; benchmarks/README.md), at the price of keeping the linearisation's residuals
  (the forward pass's activations of every chunk) in memory while the operator lives;
  `reuse_linearisation=False` recomputes them in every product instead.
  Coupled L2 weight decay wd adds wd * I, i.e. exactly wd to every eigenvalue; it is kept
  out of H and added by `total_eigenvalues`.
- `top_eigenvalues` finds the k largest ALGEBRAIC eigenvalues (not largest magnitude: at the
  start of training a large negative eigenvalue is common) by Lanczos with full
  reorthogonalisation, warm-startable from the previous eigenvectors, and reports residuals
  ||Hv - lambda v|| / |lambda| computed with explicit products, and the number of products.
  (LOBPCG was measured slower here, 18-66 products per call against Lanczos's 11-21, with
  its loop rolled inside `lax.while_loop`: docs/curvature.md.)

Data always enters jitted functions as arguments: closing over a batch lets XLA
constant-fold the convolutions of it (docs/architecture.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eos_jax.analysis.flat import StateSpace
from eos_jax.data import eval_batches
from eos_jax.recipe import LOSSES
from eos_jax.training import steps

# --------------------------------------------------------------------------------------
# The fixed subset and the Hessian-vector product
# --------------------------------------------------------------------------------------


def train_chunks(
    dataset, size: int | None, chunk_size: int, owner: str = "sharpness"
) -> list[dict[str, np.ndarray]]:
    """The first `size` training examples (None: all), normalised, unaugmented, in chunks of
    `chunk_size` (the last may be smaller); `owner` names the setting's owner in errors."""
    n = dataset.num_train if size is None else size
    if not (isinstance(n, int) and 1 <= n <= dataset.num_train):
        raise ValueError(f"{owner} size={size!r} must be an integer in [1, {dataset.num_train}]")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"{owner} chunk_size={chunk_size!r} must be an integer >= 1")
    out, taken = [], 0
    for b in eval_batches(dataset, "train", chunk_size):
        if taken >= n:
            break
        keep = min(len(b["label"]), n - taken)
        out.append({k: v[:keep] for k, v in b.items()})
        taken += keep
    return out


def _data_loss(model, loss, space, flat_params, batch_stats, images, labels):
    """Mean data loss of one chunk as a function of the flat parameters."""
    batch = {"image": images, "label": labels}
    return steps.train_mode_loss(model, loss, space.unflatten(flat_params), batch_stats, batch)[0]


def _chunk_gradient(model, loss, space, batch_stats, images, labels):
    """w -> the gradient of one chunk's mean data loss at flat parameters w."""
    grad = jax.grad(_data_loss, argnums=3)
    return lambda w: grad(model, loss, space, w, batch_stats, images, labels)


def _chunk_hvp(model, loss, space, flat_params, batch_stats, images, labels, v):
    gradient = _chunk_gradient(model, loss, space, batch_stats, images, labels)
    return jax.jvp(gradient, (flat_params,), (v.astype(flat_params.dtype),))[1]


def _chunk_linearisation(model, loss, space, flat_params, batch_stats, images, labels):
    """The chunk's gradient map linearised at flat_params: v -> H_chunk v, a
    jax.tree_util.Partial holding the residuals (so a jitted function can return it)."""
    gradient = _chunk_gradient(model, loss, space, batch_stats, images, labels)
    return jax.linearize(gradient, flat_params)[1]


@jax.jit
def _apply_linear(linear, v):
    return linear(v)


def _weighted_sum(per_chunk: Sequence[jax.Array], counts: Sequence[int]) -> jax.Array:
    """Mean over examples: each chunk's mean weighted by its size."""
    total = sum(counts)
    out = per_chunk[0] * (counts[0] / total)
    for value, count in zip(per_chunk[1:], counts[1:], strict=True):
        out = out + value * (count / total)
    return out


@functools.cache
def _jitted_chunk_hvp(model, loss, space):
    return jax.jit(functools.partial(_chunk_hvp, model, loss, space))


@functools.cache
def _jitted_chunk_linearisation(model, loss, space):
    return jax.jit(functools.partial(_chunk_linearisation, model, loss, space))


@functools.cache
def _jitted_chunk_loss_grad(model, loss, space):
    return jax.jit(jax.value_and_grad(functools.partial(_data_loss, model, loss, space)))


class HessianOperator:
    """v -> H v for the data loss over a fixed subset; call it with a flat vector.

    `calls` counts the products computed (each is one pass over every chunk).
    reuse_linearisation: linearise each chunk's gradient once (at the first product) and
    reuse it (faster; holds the residuals), or recompute it in every product.
    """

    def __init__(self, model, loss, params, batch_stats, batches, reuse_linearisation=True):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
        if not batches:
            raise ValueError("batches is empty: give at least one chunk of examples")
        self.space = StateSpace.of(params)
        self.key = (model, loss, self.space)
        self.flat_params = self.space.flatten(params)
        self.batch_stats = batch_stats
        self.images = [jnp.asarray(b["image"]) for b in batches]
        self.labels = [jnp.asarray(b["label"]) for b in batches]
        self.counts = [int(x.shape[0]) for x in self.images]
        self.calls = 0
        self.reuse_linearisation = reuse_linearisation
        self._linear = None  # each chunk's linearised gradient map, made at the first product

    @property
    def dim(self) -> int:
        return self.space.dim

    @property
    def dtype(self):
        return self.flat_params.dtype

    def __call__(self, v: jax.Array) -> jax.Array:
        v = jnp.asarray(v, self.dtype)
        if v.shape != (self.dim,):
            raise ValueError(f"vector shape {v.shape} does not match the dimension ({self.dim},)")
        self.calls += 1
        if not self.reuse_linearisation:
            fn = _jitted_chunk_hvp(*self.key)
            chunks = zip(self.images, self.labels, strict=True)
            per_chunk = [fn(self.flat_params, self.batch_stats, x, y, v) for x, y in chunks]
            return _weighted_sum(per_chunk, self.counts)
        return _weighted_sum([_apply_linear(f, v) for f in self._linearised()], self.counts)

    def _linearised(self) -> list:
        """Each chunk's gradient map linearised at the operator's point, made once."""
        if self._linear is None:
            fn = _jitted_chunk_linearisation(*self.key)
            chunks = zip(self.images, self.labels, strict=True)
            self._linear = [fn(self.flat_params, self.batch_stats, x, y) for x, y in chunks]
        return self._linear

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
    model, loss: str, params, batch_stats, batches, reuse_linearisation: bool = True
) -> HessianOperator:
    """The data-loss Hessian at `params` as an operator on flat vectors.

    batches: a list of {'image', 'label'} chunks (see `train_chunks`) covering the fixed
    subset; the loss is the mean over all their examples, at the train-mode forward pass
    (BN batch statistics per chunk), as the optimiser sees it. reuse_linearisation: see
    HessianOperator.
    """
    return HessianOperator(model, loss, params, batch_stats, batches, reuse_linearisation)


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
    """Wraps a flat hvp and counts its calls."""

    def __init__(self, hvp, dim):
        self.hvp, self.dim, self.calls = hvp, dim, 0
        if hasattr(hvp, "dtype"):  # a HessianOperator, or an operator wrapping one
            self.dtype = hvp.dtype
        else:  # a plain function: the session's default float (float64 under x64)
            probe = jax.ShapeDtypeStruct((dim,), jnp.result_type(float))
            self.dtype = jax.eval_shape(hvp, probe).dtype

    def __call__(self, v):
        self.calls += 1
        return jnp.asarray(self.hvp(v), self.dtype)


def _check_solver_args(dim, k, tol, max_iters):
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    if not (isinstance(max_iters, int) and max_iters >= 1):
        raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}")
    if k > dim:
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


@jax.jit
def _reorthogonalise(Q, w):
    """w minus its projection on the rows of Q (unused rows are zero), twice ("twice is
    enough": classical Gram-Schmidt repeated keeps orthogonality at rounding level)."""
    for _ in range(2):
        w = w - Q.T @ (Q @ w)
    return w


@functools.partial(jax.jit, static_argnums=1)
def _grow(Q, rows: int):
    """Q with zero rows appended up to `rows` (a larger basis)."""
    return jnp.concatenate([Q, jnp.zeros((rows - Q.shape[0], Q.shape[1]), Q.dtype)])


@functools.partial(jax.jit, donate_argnums=0)
def _set_row(Q, j, q):
    return Q.at[j].set(q)


def _lanczos(op: _Counted, q0, steps_max, stop=None, check_every=5):
    """Lanczos with full reorthogonalisation; returns (alphas, betas, Q rows used).

    A Python loop of jitted products (a rolled loop around conv gradients is slow on CPU).
    stop(alphas, betas) is asked every `check_every` steps whether to end early. The basis
    starts with room for 8 vectors and doubles when full: reorthogonalising against a
    preallocated basis of steps_max rows cost more than the products themselves for a
    55k-parameter MLP (benchmarks/README.md), and a warm start usually needs 6.
    """
    dim = q0.shape[0]
    steps_max = min(steps_max, dim)
    Q = jnp.zeros((min(8, steps_max + 1), dim), op.dtype)
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
        if j + 1 == Q.shape[0]:
            Q = _grow(Q, min(2 * Q.shape[0], steps_max + 1))
        Q = _set_row(Q, j + 1, q)
    m = len(alphas)
    return np.array(alphas), np.array(betas), Q[:m]


def _tridiagonal_eig(alphas, betas):
    m = len(alphas)
    T = np.diag(alphas) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
    return np.linalg.eigh(T)


def top_eigenvalues(
    hvp: Callable,
    dim: int,
    k: int = 1,
    init=None,
    tol: float = 1e-3,
    max_iters: int = 200,
    seed: int = 0,
) -> Result:
    """The k largest algebraic eigenvalues of a symmetric operator given by products, by
    Lanczos with full reorthogonalisation.

    hvp: flat vector -> flat vector (a `HessianOperator`, or any traceable function).
    init: previous eigenvectors (dim, j <= k) for a warm start (their sum is the starting
    vector); None starts from a random vector.
    tol: target for ||Hv - lambda v|| / |lambda| of every returned pair (reported, not
    guaranteed: the solver stops at max_iters iterations).
    """
    _check_solver_args(dim, k, tol, max_iters)
    op = _Counted(hvp, dim)
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
