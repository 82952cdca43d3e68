"""The one-layer CNN of the paper's theory as a gradient-descent PDE (REFERENCE.md section 4).

Model: p = mean_x s((K * I)(x)), s(z) = z sigmoid(beta z), loss BCE(sigmoid(p), y) plus
(alpha/2)||K||^2, trained by full-batch gradient descent in float64. Its gradient flow is

    dK/dt(y) = -a(K) mean_x[ s'((K * I)(x)) I(x + y) ] - alpha K(y),   a = sigmoid(p) - y,

and gradient descent with learning rate lr is forward Euler on it with dt = lr. This module
gives the loss, the closed-form right-hand side (to check autodiff against), GD trajectories
with the paper's perturbed update, the three regional linearisations of the paper's Table 3
with their stability bounds computed from the image, the transitioning-region linear PDE of
Table 2 / Figure 3, and the diagnostics that classify a run as converging, restrained or
blowing up.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import scipy.sparse.linalg

from eos_jax.analysis import pde
from eos_jax.models.one_layer import OneLayerConv, swish, valid_correlation_fft
from eos_jax.training import optim

# A position x is activated where beta*z > 3 and not activated where beta*z < -3, z = (K*I)(x):
# there sigmoid(beta z) is within 5% of 1 or 0, so s(z) ~ z or s(z) ~ 0 (Table 3's regimes).
REGION_THRESHOLD = 3.0
REGIONS = ("activated", "transitioning", "not_activated")

# Run classification (classify_run): the last quarter of the run is the tail.
TAIL_FRACTION = 0.25
BLOWUP_ENVELOPE_GROWTH = 2.0  # max |K| in the tail over max |K| in the quarter before
CONVERGED_RELATIVE_STEP = 1e-8  # |K_{t+1} - K_t| / |K_t| over the whole tail
# The rule compares the tail with the quarter before it: with 4 steps both hold one step.
MIN_CLASSIFY_STEPS = 4

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


# --- Data and initialisation ------------------------------------------------------------------


def checkerboard(size: int = 256) -> np.ndarray:
    """The paper's input: +1 where i + j is even, -1 elsewhere (float64).

    This phase gives REFERENCE.md's equilibrium loss 0.29149; the other phase breaks the
    tie between the 25313 and 25312 positions of each sign the other way (loss 0.29150).
    """
    i = np.arange(size)
    return np.where((i[:, None] + i[None, :]) % 2 == 0, 1.0, -1.0)


def initial_kernel(size: int = 32, seed: int = 7, std: float = 1.0) -> np.ndarray:
    """std * randn(size, size) from NumPy's legacy generator (the paper's seed 7)."""
    return std * np.random.RandomState(seed).randn(size, size)


# --- Model, loss, closed-form PDE right-hand side ------------------------------------------------


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


_responses = jax.jit(responses)


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


def swish_derivative(z, beta: float = 1.0):
    """s'(z) = sigmoid(beta z) + beta z sigmoid(beta z) (1 - sigmoid(beta z))."""
    sig = jax.nn.sigmoid(beta * z)
    return sig + beta * z * sig * (1 - sig)


def pde_rhs(kernel, image, alpha, beta: float = 1.0, label=1.0):
    """Closed form dK/dt = -a(K) mean_x[s'(z(x)) I(x + y)] - alpha K, a = sigmoid(p) - y."""
    z = responses(kernel, image)
    a = jax.nn.sigmoid(jnp.mean(swish(z, beta))) - label
    weighted_input = valid_correlation_fft(image[None], swish_derivative(z, beta))[0] / z.size
    return -a * weighted_input - alpha * kernel


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


# --- Gradient descent ------------------------------------------------------------------------


@dataclasses.dataclass
class Trajectory:
    """Iterates of one GD run. Entries after a blow-up (first non-finite iterate) are NaN."""

    kernels: np.ndarray  # (steps + 1, h, w)
    losses: np.ndarray  # (steps + 1,) loss with weight decay at each iterate
    lr: float
    alpha: float
    k: int

    @property
    def kernel_norms(self) -> np.ndarray:
        """|K_t|; inf where a blown-up iterate's square overflows."""
        with np.errstate(over="ignore"):
            return np.sqrt(np.sum(self.kernels**2, axis=(1, 2)))

    @property
    def relative_steps(self) -> np.ndarray:
        """|K_{t+1} - K_t| / |K_t| for t = 0 .. steps - 1."""
        with np.errstate(over="ignore", invalid="ignore"):
            steps = np.sqrt(np.sum(np.diff(self.kernels, axis=0) ** 2, axis=(1, 2)))
            return steps / self.kernel_norms[:-1]

    @property
    def blowup_step(self) -> int:
        """First iterate that is not finite (the run blew up there); -1 if none is."""
        bad = ~np.all(np.isfinite(self.kernels), axis=(1, 2))
        return int(np.argmax(bad)) if bad.any() else -1


@functools.cache
def _gd_step(alpha: float, k: int, beta: float):
    """One jitted GD step for fixed (alpha, k, beta); lr and the label stay traced arguments."""

    def step(kernel, opt_state, image, lr, label):
        value, grad = jax.value_and_grad(data_loss)(kernel, image, beta, label)
        tx = optim.sgd(lr, weight_decay=alpha, k=k)
        updates, opt_state = tx.update(grad, opt_state, kernel)
        total = value + 0.5 * alpha * jnp.sum(kernel**2)
        return optax.apply_updates(kernel, updates), opt_state, total

    return jax.jit(step)


_total_loss = jax.jit(loss, static_argnames=("beta",))


def gd_trajectory(
    kernel0, image, *, lr: float, alpha: float, steps: int, k: int = 1, beta: float = 1.0, label=1.0
) -> Trajectory:
    """Full-batch GD K <- K - (lr*k) * ((grad + alpha K)/k) via optim.sgd, in float64.

    k = 1 is plain GD; odd k > 1 perturbs each update by about one ulp (the paper's twins).
    Stops at the first iterate that, or whose loss, is not finite (the run blew up).
    """
    pde.require_float64()
    if lr <= 0 or alpha < 0 or steps < 1:
        raise ValueError(
            f"need lr > 0, alpha >= 0, steps >= 1; got lr={lr}, alpha={alpha}, steps={steps}"
        )
    step = _gd_step(float(alpha), int(k), float(beta))
    kernel = jnp.asarray(kernel0, jnp.float64)
    image = jnp.asarray(image, jnp.float64)
    lr_arr, label_arr = jnp.asarray(lr, jnp.float64), jnp.asarray(label, jnp.float64)
    opt_state = optim.sgd(lr, weight_decay=alpha, k=k).init(kernel)
    kernels = np.full((steps + 1,) + kernel.shape, np.nan)
    losses = np.full(steps + 1, np.nan)
    kernels[0] = np.asarray(kernel)
    for t in range(steps):
        kernel, opt_state, losses[t] = step(kernel, opt_state, image, lr_arr, label_arr)
        if not np.isfinite(losses[t]):
            break
        kernels[t + 1] = np.asarray(kernel)
        if not np.all(np.isfinite(kernels[t + 1])):
            break
    else:
        losses[steps] = float(_total_loss(kernel, image, alpha, beta, label_arr))
    return Trajectory(kernels, losses, float(lr), float(alpha), int(k))


def twin_divergence(first: Trajectory, second: Trajectory) -> np.ndarray:
    """The paper's relative-L1 distance 2 mean(|w1 - w2| / (|w1| + |w2|)) at every iterate.

    On finite iterates this is bits.diff_stats' rel_l1 (0 where the entries are equal). An
    entry that is not finite in either twin (a blow-up, and the NaN padding after it) counts
    as fully different, relative difference 1, as in diff_stats: a blown-up pair reads as the
    maximal divergence 2, never as rounding level.
    """
    steps = min(len(first.kernels), len(second.kernels))
    a, b = first.kernels[:steps], second.kernels[:steps]
    finite = np.isfinite(a) & np.isfinite(b)
    a0, b0 = np.where(finite, a, 0.0), np.where(finite, b, 0.0)
    diff, denom = np.abs(a0 - b0), np.abs(a0) + np.abs(b0)
    rel = np.divide(diff, denom, out=np.zeros_like(diff), where=denom > 0)
    rel = np.where(finite | (a == b), rel, 1.0)  # equal infinities are not a difference
    return 2 * np.mean(rel, axis=(1, 2))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` iterates (over fewer at the start)."""
    values = np.asarray(values, float)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    t = np.arange(len(values))
    start = np.maximum(0, t - window + 1)
    return (cumulative[t + 1] - cumulative[start]) / (t + 1 - start)


# --- Regions of kernel space and their linearisations (paper Table 3) -------------------------


def classify_positions(z, beta: float = 1.0, threshold: float = REGION_THRESHOLD) -> np.ndarray:
    """+1 activated (beta z > threshold), -1 not activated (< -threshold), 0 transitioning."""
    bz = beta * np.asarray(z)
    return np.where(bz > threshold, 1, np.where(bz < -threshold, -1, 0)).astype(np.int8)


def region_counts(kernel, image, beta: float = 1.0, threshold: float = REGION_THRESHOLD) -> dict:
    """How many valid positions x lie in each region for kernel K."""
    labels = classify_positions(
        _responses(jnp.asarray(kernel), jnp.asarray(image)), beta, threshold
    )
    codes = (1, 0, -1)
    return {name: int(np.sum(labels == code)) for name, code in zip(REGIONS, codes, strict=True)}


def region_signature(counts: dict) -> str:
    """The occupied regions as a short name, e.g. 'A+N' (activated and not activated)."""
    return "+".join(name[0].upper() for name in REGIONS if counts[name] > 0) or "-"


def region_sequence(
    trajectory: Trajectory, image, beta: float = 1.0, threshold: float = REGION_THRESHOLD
) -> list[tuple[str, int, int]]:
    """Regions visited along a run: (signature, first step, number of steps), run-length encoded."""
    runs: list[list] = []
    for t, kernel in enumerate(trajectory.kernels):
        if not np.all(np.isfinite(kernel)):
            break
        signature = region_signature(region_counts(kernel, image, beta, threshold))
        if runs and runs[-1][0] == signature:
            runs[-1][2] += 1
        else:
            runs.append([signature, t, 1])
    return [tuple(r) for r in runs]


def window_sums(image, kernel_shape: tuple[int, int]):
    """sum_x I(x + y) over the valid positions x, for every kernel offset y."""
    valid = (image.shape[0] - kernel_shape[0] + 1, image.shape[1] - kernel_shape[1] + 1)
    return valid_correlation_fft(image[None], jnp.ones(valid, image.dtype))[0]


def gram_apply(kernel, image):
    """G K (y) = sum_x (K * I)(x) I(x + y): the input's second-moment operator on kernels."""
    return valid_correlation_fft(image[None], responses(kernel, image))[0]


def gram_matrix(image, kernel_shape: tuple[int, int]) -> np.ndarray:
    """G as a dense (h*w, h*w) matrix, G[y, y'] = sum_x I(x + y) I(x + y')."""
    pde.require_float64()
    image = jnp.asarray(image, jnp.float64)
    return pde.operator_matrix(lambda k: gram_apply(k, image), kernel_shape)


def num_valid_positions(image_shape, kernel_shape) -> int:
    return (image_shape[0] - kernel_shape[0] + 1) * (image_shape[1] - kernel_shape[1] + 1)


@dataclasses.dataclass(frozen=True)
class RegionalSpectra:
    """Ascending eigenvalues m of each region's linear data operator: dK/dt = -(alpha + m) K + b.

    Derived from Table 3 by replacing s with its regional model and linearising
    a = sigmoid(p) - y around p = 0 (a0 = sigmoid(0) - y, slope 1/4):
      not activated  s = 0:              data operator 0                 -> m = 0
      activated      s(z) = z:           (1/4) Ibar Ibar^T     -> m = |Ibar|^2 / 4, 0, ...
      transitioning  s(z) = z/2 + beta z^2/4, a = a0 (Table 2's PDE):
                                         (a0 beta / 2) G        -> m = (a0 beta / 2) eig(G)
    Ibar(y) = mean_x I(x + y), G = Gram operator / N ('mean', the model's normalisation) or with
    unnormalised sums over the N valid positions ('sum', the paper's Figure 3 check), where both
    operators are N times larger. The eigenvectors of G are Fourier modes when I is stationary;
    `fourier` gives G's Fourier-mode Rayleigh quotients, the von Neumann estimate of eig(G).
    """

    not_activated: np.ndarray
    activated: np.ndarray
    transitioning: np.ndarray
    gram_eigenvalues: np.ndarray
    gram_fourier: np.ndarray
    a0: float
    normalization: str

    def by_region(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in REGIONS}

    def max_stable_lrs(self, alpha: float) -> dict[str, float]:
        """Largest stable lr of each region at weight decay alpha (0: unstable for every lr)."""
        return {name: pde.max_stable_dt(alpha + m) for name, m in self.by_region().items()}


def regional_spectra(
    image,
    kernel_shape: tuple[int, int],
    beta: float = 1.0,
    label: float = 1.0,
    normalization: str = "mean",
) -> RegionalSpectra:
    """The data eigenvalues of the three regional linear PDEs, computed from the image."""
    if normalization not in ("mean", "sum"):
        raise ValueError(f"normalization must be 'mean' or 'sum', got {normalization!r}")
    image = np.asarray(image, np.float64)
    n_valid = num_valid_positions(image.shape, kernel_shape)
    scale = 1.0 if normalization == "sum" else 1.0 / n_valid
    gram = gram_matrix(image, kernel_shape) * scale
    gram_eigs = pde.dense_eigenvalues(gram)
    mean_input = np.asarray(window_sums(jnp.asarray(image), kernel_shape)).ravel() / n_valid
    a0 = 0.5 - label  # sigmoid(0) - y
    size = int(np.prod(kernel_shape))
    activated = np.zeros(size)
    activated[-1] = 0.25 * float(mean_input @ mean_input) * n_valid * scale
    return RegionalSpectra(
        not_activated=np.zeros(size),
        activated=activated,
        transitioning=np.sort(0.5 * a0 * beta * gram_eigs),
        gram_eigenvalues=gram_eigs,
        gram_fourier=pde.fourier_diagonal(gram, kernel_shape),
        a0=a0,
        normalization=normalization,
    )


def transitioning_rhs(kernel, image, alpha, beta: float = 1.0, label=1.0, normalization="sum"):
    """Table 2's linear PDE: dK/dt = -(a0/2)(Ibar + beta G K) - alpha K, a0 = sigmoid(0) - y.

    With 'sum' (the paper's Figure 3) Ibar and G K are sums over the valid positions; with
    'mean' they are means, and the PDE is the model's flow linearised at K = 0.
    """
    scale = 1.0 if normalization == "sum" else 1.0 / num_valid_positions(image.shape, kernel.shape)
    a0 = 0.5 - label
    data = window_sums(image, kernel.shape) + beta * gram_apply(kernel, image)
    return -0.5 * a0 * scale * data - alpha * kernel


def run_transitioning_pde(
    kernel0,
    image,
    *,
    alpha: float,
    dt: float,
    steps: int,
    beta: float = 1.0,
    label: float = 1.0,
    normalization: str = "sum",
) -> np.ndarray:
    """Forward Euler on transitioning_rhs; returns the iterates (steps + 1, h, w)."""
    if dt <= 0 or steps < 1:
        raise ValueError(f"need dt > 0 and steps >= 1; got dt={dt}, steps={steps}")
    rhs = functools.partial(transitioning_rhs, beta=beta, label=label, normalization=normalization)
    return pde.forward_euler(rhs, kernel0, dt, steps, jnp.asarray(image, jnp.float64), alpha)


# --- Equilibrium and local curvature -----------------------------------------------------------


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
        """converging below the local bound, blow-up above 2/alpha, restrained between."""
        if np.isclose(lr, self.weight_decay_lr, rtol=1e-12, atol=0):
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
    rank = int(np.sum(spectra.gram_eigenvalues > 1e-10 * spectra.gram_eigenvalues.max()))
    return Thresholds(
        alpha=float(alpha),
        weight_decay_lr=lrs["not_activated"],
        activated_lr=lrs["activated"],
        transitioning_lr=lrs["transitioning"],
        equilibrium_lr=pde.max_stable_dt([low, high]),
        equilibrium_loss=float(_total_loss(jnp.asarray(equilibrium), eq_image, alpha, beta, label)),
        equilibrium_hessian=(low, high),
        equilibrium_response=float(np.max(np.abs(_responses(jnp.asarray(equilibrium), eq_image)))),
        equilibrium_gradient_norm=gradient_norm,
        free_directions=spectra.gram_eigenvalues.size - rank,
    )


# --- Restraint diagnostics and the run classification rule -------------------------------------


def step_curvatures(
    trajectory: Trajectory, image, beta: float = 1.0, label: float = 1.0, start: int = 0
) -> np.ndarray:
    """kappa_t = curvature at K_t along the step K_{t+1} - K_t, for t = start .. last step.

    lr * kappa_t > 2 means the step overshoots: along its own direction it is beyond the local
    forward-Euler bound. NaN where the step is zero or not finite.
    """
    image = jnp.asarray(image, jnp.float64)
    kernels = trajectory.kernels
    out = np.full(len(kernels) - 1 - start, np.nan)
    for i, t in enumerate(range(start, len(kernels) - 1)):
        step = kernels[t + 1] - kernels[t]
        if not np.all(np.isfinite(step)) or not np.any(step):
            continue
        out[i] = float(
            curvature_along(
                jnp.asarray(kernels[t]), jnp.asarray(step), image, trajectory.alpha, beta, label
            )
        )
    return out


@dataclasses.dataclass(frozen=True)
class RunDiagnosis:
    """Observed class of a run and the evidence the rule used."""

    run_class: str
    envelope_growth: float  # max |K| over the tail / max |K| over the quarter before it
    max_tail_relative_step: float
    unstable_step_fraction: float  # tail steps with lr * kappa_t > 2
    tail_loss_range: tuple[float, float]


def classify_run(trajectory: Trajectory, tail_curvatures: np.ndarray) -> RunDiagnosis:
    """The rule, applied to the last quarter of the run (the tail) and the quarter before:

    1. blow-up     if any iterate is non-finite, or max |K| grew by more than
                   BLOWUP_ENVELOPE_GROWTH (2x) from the previous quarter to the tail;
    2. converging  if every tail step is smaller than CONVERGED_RELATIVE_STEP (1e-8) of |K|,
                   or every tail step is within the local bound (lr * kappa_t <= 2);
    3. restrained  otherwise: bounded, not settling, and with steps beyond the local bound.

    tail_curvatures are step_curvatures(...) from the start of the tail. Needs a run of
    MIN_CLASSIFY_STEPS steps at least (ValueError otherwise: the tail would be empty).
    """
    norms = trajectory.kernel_norms
    steps = len(norms) - 1
    if steps < MIN_CLASSIFY_STEPS:
        raise ValueError(
            f"classify_run needs a run of at least {MIN_CLASSIFY_STEPS} steps, got {steps}"
        )
    start = tail_start(trajectory)
    before_start = max(0, start - (steps - start))
    tail_losses = trajectory.losses[start:]
    if not np.all(np.isfinite(norms)):
        return RunDiagnosis(
            "blow-up", float("inf"), float("inf"), float("nan"), (float("nan"),) * 2
        )
    growth = float(norms[start:].max() / norms[before_start:start].max())
    max_step = float(trajectory.relative_steps[start:].max())
    unstable = float(np.mean(trajectory.lr * tail_curvatures > 2.0))
    loss_range = (float(tail_losses.min()), float(tail_losses.max()))
    if growth > BLOWUP_ENVELOPE_GROWTH:
        run_class = "blow-up"
    elif max_step <= CONVERGED_RELATIVE_STEP or unstable == 0:
        run_class = "converging"
    else:
        run_class = "restrained"
    return RunDiagnosis(run_class, growth, max_step, unstable, loss_range)


def tail_start(trajectory: Trajectory) -> int:
    """First step of the tail that classify_run looks at."""
    steps = len(trajectory.kernels) - 1
    return steps - int(TAIL_FRACTION * steps)


def diagnose(trajectory: Trajectory, image, beta: float = 1.0, label: float = 1.0) -> RunDiagnosis:
    """classify_run with the tail's step curvatures computed here."""
    curvatures = step_curvatures(trajectory, image, beta, label, start=tail_start(trajectory))
    return classify_run(trajectory, curvatures)
