"""Regions of kernel space and their linear PDEs (the paper's Tables 2 and 3).

A valid position x is activated, transitioning or not activated by the size of beta (K * I)(x);
in each region s is replaced by a simple model and the flow linearised: `regional_spectra`
gives each linear PDE's data eigenvalues (hence its stability bound) from the image, and
`run_transitioning_pde` runs Table 2's PDE (the paper's Figure 3).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from eos_jax.analysis import pde
from eos_jax.analysis.one_layer.gd import Trajectory
from eos_jax.analysis.one_layer.problem import jitted_responses, responses
from eos_jax.models.one_layer import valid_correlation_fft

# A position x is activated where beta*z > 3 and not activated where beta*z < -3, z = (K*I)(x):
# there sigmoid(beta z) is within 5% of 1 or 0, so s(z) ~ z or s(z) ~ 0 (Table 3's regimes).
REGION_THRESHOLD = 3.0
REGIONS = ("activated", "transitioning", "not_activated")
# Gram eigenvalues below this fraction of the largest count as zero (rounding of the sums):
# their eigenvectors are orthogonal to every patch of the image.
SPAN_RTOL = 1e-10
# A run is neutral where its free component's per-step factor |1 - lr*alpha| is within this of 1
# (lr = 2/alpha: the factor is -1). Rounding moves that component's norm by ~1e-16 relative per
# step (1e-13 in 1000 steps at alpha = 20, lr = 0.1), while an lr 1% off 2/alpha moves it by 2%
# per step; 1e-9 lies far from both, and over 1000 steps it is a change of 1e-6, easily measured.
NEUTRAL_RATE_TOL = 1e-9


def classify_positions(z, beta: float = 1.0, threshold: float = REGION_THRESHOLD) -> np.ndarray:
    """+1 activated (beta z > threshold), -1 not activated (< -threshold), 0 transitioning."""
    bz = beta * np.asarray(z)
    return np.where(bz > threshold, 1, np.where(bz < -threshold, -1, 0)).astype(np.int8)


def region_counts(kernel, image, beta: float = 1.0, threshold: float = REGION_THRESHOLD) -> dict:
    """How many valid positions x lie in each region for kernel K."""
    labels = classify_positions(
        jitted_responses(jnp.asarray(kernel), jnp.asarray(image)), beta, threshold
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


def patch_span(image, kernel_shape: tuple[int, int]) -> np.ndarray:
    """Orthonormal basis (h*w, r) of the span of the image's kernel-sized patches (range of G).

    The loss sees K only through (K * I)(x) = <K, patch at x>, so along every direction
    orthogonal to this span (a 'free direction') it is (alpha/2)|K|^2 alone: GD multiplies K's
    free component by 1 - lr*alpha at every step, in every region.
    """
    eigenvalues, vectors = np.linalg.eigh(gram_matrix(image, kernel_shape))
    return vectors[:, eigenvalues > SPAN_RTOL * eigenvalues.max()]


def num_valid_positions(image_shape, kernel_shape) -> int:
    """How many positions x the valid correlation K * I has."""
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
