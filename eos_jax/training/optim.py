"""PyTorch-equivalent SGD as optax transformations, and the paper's perturbed update.

PyTorch's SGD step, for every parameter w with gradient g::

    d = g + wd * w                                  (coupled L2 weight decay)
    buf = d (first step), else buf = mu * buf + d   (momentum buffer)
    d = d + mu * buf  (Nesterov)  or  d = buf  (heavy ball)
    w = w - lr * d

optax.add_decayed_weights and optax.trace compute exactly the first three lines (trace starts
from a zero buffer, so buf = 0 * mu + d = d on the first step). The last line becomes the
paper's perturbed update w <- w - (lr * k) * (d / k): for k = 1 and powers of two it is
exactly plain SGD; for odd k > 1 the two roundings differ from lr * d by about one ulp.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def step_decay(base_lr: float, boundaries: Sequence[int], factor: float = 0.1) -> optax.Schedule:
    """Piecewise-constant lr: base_lr, times factor at each boundary step (PyTorch MultiStepLR).

    The values are computed on the host in double precision by repeated multiplication, as
    PyTorch does, and rounded once to the parameter dtype where they are used.
    """
    if any(b <= 0 for b in boundaries) or list(boundaries) != sorted(boundaries):
        raise ValueError(f"boundaries must be positive and increasing, got {list(boundaries)}")
    values = [float(base_lr)]
    for _ in boundaries:
        values.append(values[-1] * factor)
    values_arr = jnp.asarray(values)  # float64 under x64, else float32: one rounding
    bounds = jnp.asarray(list(boundaries), dtype=jnp.int32)

    def schedule(count):
        return values_arr[jnp.searchsorted(bounds, count, side="right")]

    return schedule


class PerturbedLrState(NamedTuple):
    count: jax.Array  # steps taken, for the schedule
    k: jax.Array  # the perturbation integer, traced so XLA cannot fold (lr * k) * (d / k)


def scale_by_perturbed_lr(learning_rate: float | optax.Schedule, k: int = 1):
    """updates -> -(lr * k) * (updates / k), computed in the update's dtype.

    k lives in the optimiser state (traced, so XLA cannot fold the two roundings away), and
    each member of an ensemble can carry its own k. lr is first rounded to the update's
    dtype, then lr * k is rounded again there: for odd k > 1 both factors are about one ulp
    off lr * d, which is the perturbation. A scheduled lr is traced too; a constant lr is
    a compile-time constant, harmless because the traced k stops any folding.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"perturbation k must be a positive integer, got {k!r}")
    schedule = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init_fn(params):
        del params
        return PerturbedLrState(jnp.zeros([], jnp.int32), jnp.asarray(k, jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        lr = jnp.asarray(schedule(state.count))

        def scale(d):
            lr_d, k_d = lr.astype(d.dtype), state.k.astype(d.dtype)
            # XLA rewrites x / broadcast(k) as x * (1/k), which is another rounding (for
            # lr = 0.1 and k = 5 in fp32 it even gives plain SGD's bits); the barrier keeps
            # the division elementwise, as written.
            k_full = jax.lax.optimization_barrier(jnp.broadcast_to(k_d, d.shape))
            return -((lr_d * k_d) * (d / k_full))

        new_state = PerturbedLrState(optax.safe_increment(state.count), state.k)
        return jax.tree.map(scale, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def sgd(
    learning_rate: float | optax.Schedule,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    k: int = 1,
) -> optax.GradientTransformation:
    """PyTorch's torch.optim.SGD (dampening 0) with the paper's perturbation k."""
    if nesterov and momentum <= 0:
        raise ValueError(f"nesterov needs momentum > 0, got momentum={momentum}")
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    if momentum:
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts.append(scale_by_perturbed_lr(learning_rate, k))
    return optax.chain(*parts)


def perturbation_k(opt_state) -> jax.Array:
    """The k of an sgd(...) state (the last transformation's)."""
    return opt_state[-1].k
