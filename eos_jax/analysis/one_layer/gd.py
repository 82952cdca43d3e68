"""Full-batch gradient descent on the one-layer problem, and the twins' divergence.

GD with learning rate lr is forward Euler with dt = lr on the problem's gradient flow; odd k > 1
runs the paper's perturbed update (about one ulp different per step).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eos_jax import bits
from eos_jax.analysis import pde
from eos_jax.analysis.one_layer.problem import data_loss, jitted_loss
from eos_jax.training import optim


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
        losses[steps] = float(jitted_loss(kernel, image, alpha, beta, label_arr))
    return Trajectory(kernels, losses, float(lr), float(alpha), int(k))


def twin_divergence(first: Trajectory, second: Trajectory) -> np.ndarray:
    """The paper's relative-L1 distance D = 2 mean(|w1 - w2| / (|w1| + |w2|)) at every
    iterate (bits.relative_differences, as diff_stats' rel_l1): an entry that is not finite
    in either twin (a blow-up, and the NaN padding after it) counts as fully different, so a
    blown-up pair reads as the maximal divergence 2, never as rounding level.
    """
    steps = min(len(first.kernels), len(second.kernels))
    a, b = first.kernels[:steps], second.kernels[:steps]
    return 2 * np.mean(bits.relative_differences(a, b), axis=(1, 2))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` iterates (over fewer at the start)."""
    values = np.asarray(values, float)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    t = np.arange(len(values))
    start = np.maximum(0, t - window + 1)
    return (cumulative[t + 1] - cumulative[start]) / (t + 1 - start)
