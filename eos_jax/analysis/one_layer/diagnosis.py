"""Observed class of a GD run: converging, restrained, neutral or blow-up, and the evidence."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from eos_jax.analysis.one_layer.gd import Trajectory
from eos_jax.analysis.one_layer.problem import curvature_along
from eos_jax.analysis.one_layer.regions import NEUTRAL_RATE_TOL, patch_span

# Run classification (classify_run): the last quarter of the run is the tail.
TAIL_FRACTION = 0.25
BLOWUP_ENVELOPE_GROWTH = 2.0  # max |K| in the tail over max |K| in the quarter before
CONVERGED_RELATIVE_STEP = 1e-8  # |K_{t+1} - K_t| / |K_t| over the whole tail
# The rule compares the tail with the quarter before it: with 4 steps both hold one step.
MIN_CLASSIFY_STEPS = 4


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
    free_rate: float  # per-step growth of |K_free| over the run; NaN: no free component


def free_component_norms(trajectory: Trajectory, span: np.ndarray) -> np.ndarray:
    """|K_t - span span^T K_t| at every iterate: the norm of K's component in the free
    directions, orthogonal to every patch (span: patch_span's orthonormal basis). Exactly 0
    where the patches span every direction (no free component, only rounding)."""
    kernels = trajectory.kernels.reshape(len(trajectory.kernels), -1)
    if span.shape[1] == kernels.shape[1]:
        return np.zeros(len(kernels))
    with np.errstate(over="ignore", invalid="ignore"):
        return np.linalg.norm(kernels - (kernels @ span) @ span.T, axis=1)


def classify_run(
    trajectory: Trajectory, tail_curvatures: np.ndarray, free_norms: np.ndarray | None = None
) -> RunDiagnosis:
    """The rule, applied to the last quarter of the run (the tail) and the quarter before:

    1. blow-up     if any iterate is non-finite, or max |K| grew by more than
                   BLOWUP_ENVELOPE_GROWTH (2x) from the previous quarter to the tail;
    2. neutral     if K has a free component (free_norms, from free_component_norms) whose
                   per-step growth over the run is within NEUTRAL_RATE_TOL of 1: GD neither
                   damps nor amplifies it (lr = 2/alpha, factor 1 - lr*alpha = -1);
    3. converging  if every tail step is smaller than CONVERGED_RELATIVE_STEP (1e-8) of |K|,
                   or every tail step is within the local bound (lr * kappa_t <= 2);
    4. restrained  otherwise: bounded, not settling, and with steps beyond the local bound.

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
        nan = float("nan")
        return RunDiagnosis("blow-up", float("inf"), float("inf"), nan, (nan, nan), nan)
    growth = float(norms[start:].max() / norms[before_start:start].max())
    max_step = float(trajectory.relative_steps[start:].max())
    unstable = float(np.mean(trajectory.lr * tail_curvatures > 2.0))
    loss_range = (float(tail_losses.min()), float(tail_losses.max()))
    has_free = free_norms is not None and free_norms[0] > 0
    free_rate = float((free_norms[-1] / free_norms[0]) ** (1 / steps)) if has_free else np.nan
    if growth > BLOWUP_ENVELOPE_GROWTH:
        run_class = "blow-up"
    elif abs(free_rate - 1) <= NEUTRAL_RATE_TOL:
        run_class = "neutral"
    elif max_step <= CONVERGED_RELATIVE_STEP or unstable == 0:
        run_class = "converging"
    else:
        run_class = "restrained"
    return RunDiagnosis(run_class, growth, max_step, unstable, loss_range, free_rate)


def tail_start(trajectory: Trajectory) -> int:
    """First step of the tail that classify_run looks at."""
    steps = len(trajectory.kernels) - 1
    return steps - int(TAIL_FRACTION * steps)


def diagnose(
    trajectory: Trajectory,
    image,
    beta: float = 1.0,
    label: float = 1.0,
    span: np.ndarray | None = None,
) -> RunDiagnosis:
    """classify_run with the tail's step curvatures and the free norms computed here.

    span: patch_span(image, kernel shape), computed here if not given (seconds for a 32x32
    kernel: pass it when diagnosing many runs on one image).
    """
    if span is None:
        span = patch_span(image, trajectory.kernels.shape[1:])
    curvatures = step_curvatures(trajectory, image, beta, label, start=tail_start(trajectory))
    return classify_run(trajectory, curvatures, free_component_norms(trajectory, span))
