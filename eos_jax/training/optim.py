"""PyTorch-equivalent SGD and Adam / AdamW as optax transformations, and the paper's
perturbed update (adam: the same -(lr * k) * (u / k) on Adam's direction u).

PyTorch's SGD step, for every parameter w with gradient g::

    d = g + wd * w                                  (coupled L2 weight decay)
    buf = d (first step), else buf = mu * buf + d   (momentum buffer)
    d = d + mu * buf  (Nesterov)  or  d = buf  (heavy ball)
    w = w - lr * d

optax.add_decayed_weights and optax.trace compute exactly the first three lines (trace starts
from a zero buffer, so buf = 0 * mu + d = d on the first step). The last line becomes the
paper's perturbed update w <- w - (lr * k) * (d / k): for k = 1 and powers of two it is
exactly plain SGD; for odd k > 1 the two roundings differ from lr * d by about one ulp.

`arithmetic` chooses how that is rounded (ARITHMETICS): "as_written" (the default) computes
the formulas above op by op in the parameter dtype, leaving XLA free to contract a*b + c
into one FMA where the machine has it; "torch_cpu" and "authors_cuda" reproduce, for float32
parameters, the roundings of the authors' PyTorch code on CPU and on CUDA (see sgd).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eos_jax import recipe


class StepDecay:
    """Piecewise-constant lr: base_lr, changed at each boundary step by factor or divisor.

    The values are computed on the host in double precision, each from the one before, as
    PyTorch does: MultiStepLR multiplies by gamma (`factor`); the authors' recipe divides by
    10 (`divisor`), which for lr = 0.1 gives other doubles (0.1 * 0.1 != 0.1 / 10). Each
    value is rounded once to the array dtype where the schedule is evaluated; `values`
    keeps the doubles for arithmetic that forms lr * k in double (sgd's torch modes).
    """

    def __init__(self, base_lr, boundaries, factor=0.1, divisor=None):
        if (factor is None) == (divisor is None):
            raise ValueError(
                f"give exactly one of factor (lr * factor) or divisor (lr / divisor), got "
                f"factor={factor!r}, divisor={divisor!r}"
            )
        if any(b <= 0 for b in boundaries) or list(boundaries) != sorted(boundaries):
            raise ValueError(f"boundaries must be positive and increasing, got {list(boundaries)}")
        values = [float(base_lr)]
        for _ in boundaries:
            values.append(values[-1] * factor if divisor is None else values[-1] / divisor)
        self.values = tuple(values)
        self.boundaries = tuple(int(b) for b in boundaries)
        self._values = jnp.asarray(values)  # float64 under x64, else float32: one rounding
        self._bounds = jnp.asarray(self.boundaries, dtype=jnp.int32)

    def piece(self, count) -> jax.Array:
        """Index into `values` of the piece that step `count` is in."""
        return jnp.searchsorted(self._bounds, count, side="right")

    def __call__(self, count) -> jax.Array:
        return self._values[self.piece(count)]


def step_decay(
    base_lr: float,
    boundaries: Sequence[int],
    factor: float | None = 0.1,
    divisor: float | None = None,
) -> StepDecay:
    """Step decay multiplying lr by `factor` (PyTorch MultiStepLR), or dividing it by
    `divisor` at each boundary (pass factor=None); see StepDecay."""
    return StepDecay(base_lr, boundaries, factor, divisor)


def linear_warmup(schedule: Callable, steps: int) -> Callable:
    """The schedule, scaled by (count + 1) / steps over the first `steps` steps: a linear
    rise to it (e.g. for full-batch runs at an lr whose threshold 2/lr lies below the
    initial sharpness, which would otherwise diverge instead of reaching the edge)."""

    def lr(count):
        return jnp.where(count < steps, schedule(count) * (count + 1) / steps, schedule(count))

    return lr


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


class TorchSgdState(NamedTuple):
    count: jax.Array  # steps taken, for the schedule and torch's first-step buffer
    k: jax.Array  # the perturbation integer, traced as in PerturbedLrState
    alpha: jax.Array  # float32(-lr * k) per schedule piece, lr * k formed in double


ARITHMETICS = recipe.ARITHMETICS


def _host_lr(learning_rate) -> tuple[tuple[float, ...], Callable]:
    """The lr's values in double and the function count -> index of the current one."""
    if isinstance(learning_rate, StepDecay):
        return learning_rate.values, learning_rate.piece
    if callable(learning_rate):
        raise ValueError(
            "the torch arithmetics form lr * k in double on the host: give a float or "
            f"optim.step_decay(...), got {learning_rate!r}"
        )
    return (float(learning_rate),), lambda count: 0


def torch_sgd(
    learning_rate: float | StepDecay,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    k: int = 1,
    reciprocal: bool = False,
) -> optax.GradientTransformation:
    """The authors' perturbed torch.optim.SGD step, rounding as PyTorch does, float32 only.

    Their step is torch's with `d = d / k; p.add_(d, alpha=-lr * k)`. PyTorch rounds as
    follows (CPU checked with torch 2.13 itself, CUDA read in its source):
    `g.add(p, alpha=wd)`, `d.add(buf, alpha=mu)` and `p.add_(d, alpha=a)` are each one
    fused multiply-add; `buf.mul_(mu).add_(d)` is two roundings; alpha = -lr * k is a
    Python double rounded once to float32; `d / k` is a true division on CPU, while CUDA
    multiplies by float32(1 / k) (`reciprocal=True`). For k = 1 this is torch.optim.SGD.

    XLA has no FMA operation: the fused steps are left to XLA's contraction of a*b + c,
    which XLA:CPU does where the CPU has FMA (see xla_fuses_multiply_add), and barriers
    keep every other step rounded as PyTorch rounds it. The returned update is alpha * q,
    to be added to the parameters in the same jitted function (as optax.apply_updates in
    a jitted train step does) and used nowhere else, so that the add contracts too.
    The state is (optax.TraceState, TorchSgdState), or (TorchSgdState,) without momentum.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"perturbation k must be a positive integer, got {k!r}")
    values, piece = _host_lr(learning_rate)
    alpha = (-(np.asarray(values, np.float64) * int(k))).astype(np.float32)

    def init_fn(params):
        lr_state = TorchSgdState(jnp.zeros([], jnp.int32), jnp.asarray(k, jnp.int32), alpha)
        if not momentum:
            return (lr_state,)
        return optax.TraceState(jax.tree.map(jnp.zeros_like, params)), lr_state

    def update_fn(updates, state, params):
        lr_state = state[-1]
        bufs = state[0].trace if momentum else jax.tree.map(lambda _: None, updates)
        a = lr_state.alpha[piece(lr_state.count)]
        k32 = lr_state.k.astype(jnp.float32)
        neg_zero = jnp.where(lr_state.count < 0, jnp.float32(1), jnp.float32(-0.0))

        def leaf(g, p, buf):
            if g.dtype != jnp.float32 or p.dtype != jnp.float32:
                raise ValueError(f"torch arithmetic models float32 tensors, got {g.dtype}")
            d = g + weight_decay * p if weight_decay else g
            if momentum:
                # mu * buf rounded before + d: adding a -0 that XLA cannot see is exact, and
                # takes the product's contraction (barriers are gone before fusion)
                kept = (momentum * buf + neg_zero) + d
                buf = jnp.where(lr_state.count == 0, d, kept)
                d = d + momentum * buf if nesterov else buf
            if reciprocal:
                q = d * (1.0 / k32)
            else:  # the barrier stops XLA's rewrite of d / k into d * (1/k)
                q = d / jax.lax.optimization_barrier(jnp.broadcast_to(k32, d.shape))
            # q materialised: a * q must not be reassociated with the factors of q
            return a * jax.lax.optimization_barrier(q), buf

        out = jax.tree.map(leaf, updates, params, bufs)
        new_updates = jax.tree.map(lambda _, o: o[0], updates, out)
        new_lr_state = lr_state._replace(count=optax.safe_increment(lr_state.count))
        if not momentum:
            return new_updates, (new_lr_state,)
        new_bufs = jax.tree.map(lambda _, o: o[1], updates, out)
        return new_updates, (optax.TraceState(new_bufs), new_lr_state)

    return optax.GradientTransformation(init_fn, update_fn)


def sgd(
    learning_rate: float | optax.Schedule,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    k: int = 1,
    arithmetic: str = "as_written",
) -> optax.GradientTransformation:
    """PyTorch's torch.optim.SGD (dampening 0) with the paper's perturbation k.

    arithmetic "as_written" (default): optax.add_decayed_weights, optax.trace and
    scale_by_perturbed_lr, each formula as written in the update's dtype. "torch_cpu":
    torch_sgd, the authors' code on a CPU; "authors_cuda": torch_sgd(reciprocal=True),
    their code on CUDA, where they ran. The torch ones need a float or step_decay lr,
    float32 parameters and XLA contracting a*b + c into FMA (xla_fuses_multiply_add).
    """
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; allowed: {', '.join(ARITHMETICS)}")
    if nesterov and momentum <= 0:
        raise ValueError(f"nesterov needs momentum > 0, got momentum={momentum}")
    if arithmetic != "as_written":
        reciprocal = arithmetic == "authors_cuda"
        return torch_sgd(learning_rate, momentum, nesterov, weight_decay, k, reciprocal)
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    if momentum:
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts.append(scale_by_perturbed_lr(learning_rate, k))
    return optax.chain(*parts)


@jax.custom_jvp
def _sqrt(v):
    """jnp.sqrt, whose tangent at v = 0 is 0, not inf * 0 = NaN: Adam's v is 0 only where
    every gradient so far was 0, and there dv = 2 (1 - beta2) g dg = 0 exactly (the true
    change of sqrt(v) is second order), so the exact linearisation (EdgeRadius) stays finite
    on nets with dead units."""
    return jnp.sqrt(v)


@_sqrt.defjvp
def _sqrt_jvp(primals, tangents):
    (v,), (dv,) = primals, tangents
    root = jnp.sqrt(v)
    return root, jnp.where(v > 0, dv / (2 * jnp.where(v > 0, root, 1)), 0)


def scale_by_adam(b1: float, b2: float, eps: float, bias_correction: bool = True):
    """Adam's direction m_hat / (sqrt(v_hat) + eps) with optax.ScaleByAdamState: optax's
    scale_by_adam op for op (the same bits, tests/test_adam.py), its square root with a
    finite tangent at v = 0 (_sqrt), and without bias correction m / (sqrt(v) + eps)."""

    def init_fn(params):
        mu, nu = (optax.tree_utils.tree_zeros_like(params) for _ in range(2))  # two buffers
        return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), mu, nu)

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
        nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        mu_hat, nu_hat = mu, nu
        if bias_correction:
            mu_hat = optax.tree_utils.tree_bias_correction(mu, b1, count)
            nu_hat = optax.tree_utils.tree_bias_correction(nu, b2, count)
        out = jax.tree.map(lambda m, v: m / (_sqrt(v) + eps), mu_hat, nu_hat)
        return out, optax.ScaleByAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def adam(
    learning_rate: float | optax.Schedule,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    bias_correction: bool = True,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    k: int = 1,
) -> optax.GradientTransformation:
    """Adam (coupled L2: g + wd * w enters the moments, as torch.optim.Adam) or, decoupled,
    AdamW (wd * w added to Adam's direction, as optax.adamw: w <- w - lr (u + wd w)); the
    step is the paper's perturbed -(lr * k) * (u / k) (scale_by_perturbed_lr), which for
    k = 1 and powers of two is exactly optax.adam's -lr * u."""
    parts = []
    if weight_decay and not decoupled:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(scale_by_adam(beta1, beta2, eps, bias_correction))
    if weight_decay and decoupled:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(scale_by_perturbed_lr(learning_rate, k))
    return optax.chain(*parts)


def adam_preconditioner(opt_state, beta2: float, eps: float, bias_correction: bool = True):
    """Adam's current diagonal preconditioner P = sqrt(v_hat) + eps (a params-shaped tree),
    v_hat = v / (1 - beta2^t) with bias correction (v without), from an adam(...) state."""
    found = [s for _, s in optax.tree_utils.tree_get_all_with_path(opt_state, "ScaleByAdamState")]
    if len(found) != 1:
        raise ValueError(f"expected one ScaleByAdamState in the state, found {len(found)}")
    state = found[0]
    nu = state.nu
    if bias_correction:
        nu = optax.tree_utils.tree_bias_correction(nu, beta2, state.count)
    return jax.tree.map(lambda v: jnp.sqrt(v) + eps, nu)


@functools.cache
def xla_fuses_multiply_add() -> bool:
    """Whether XLA on the default backend computes float32 a*b + c with one rounding (FMA).

    (1 + 2^-12)^2 - (1 + 2^-11) is 2^-24 exactly, and 0 when the product is rounded first.
    """
    a = jnp.float32(1 + 2**-12)
    c = jnp.float32(-(1 + 2**-11))
    return float(jax.jit(lambda a, b, c: a * b + c)(a, a, c)) != 0.0


def perturbation_k(opt_state) -> jax.Array:
    """The k of an sgd(...) state, found by its state's name wherever it sits."""
    found = [
        state.k
        for name in ("PerturbedLrState", "TorchSgdState")
        for _, state in optax.tree_utils.tree_get_all_with_path(opt_state, name)
    ]
    if len(found) != 1:
        raise ValueError(f"expected one PerturbedLrState or TorchSgdState, found {len(found)}")
    return found[0]
