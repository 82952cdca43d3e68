"""The one-layer CNN of the paper's theory as a gradient-descent PDE (paper Section 4;
docs/paper.md, section 4).

Model: p = mean_x s((K * I)(x)), s(z) = z sigmoid(beta z), loss BCE(sigmoid(p), y) plus
(alpha/2)||K||^2, trained by full-batch gradient descent in float64; GD with learning rate lr
is forward Euler with dt = lr on the loss's gradient flow. The modules, by concept:

  problem      the input, the initial kernel, the loss, the closed-form PDE, Hessian products
  gd           GD trajectories (with the paper's perturbed update) and the twins' divergence
  regions      the three regions of Table 3, their linear PDEs and bounds; Table 2's PDE
  equilibrium  the equilibrium GD reaches, its Hessian, and the predicted lr thresholds
  diagnosis    the observed class of a run (converging, restrained, neutral, blow-up)

Every public name is re-exported here, so `one_layer.gd_trajectory(...)` works.
"""

from eos_jax.analysis.one_layer.diagnosis import (
    BLOWUP_ENVELOPE_GROWTH,
    CONVERGED_RELATIVE_STEP,
    MIN_CLASSIFY_STEPS,
    TAIL_FRACTION,
    RunDiagnosis,
    classify_run,
    diagnose,
    free_component_norms,
    step_curvatures,
    tail_start,
)
from eos_jax.analysis.one_layer.equilibrium import (
    EQUILIBRIUM_GRADIENT_TOL,
    EquilibriumNotFound,
    Thresholds,
    find_equilibrium,
    hessian_extreme_eigenvalues,
    predicted_thresholds,
)
from eos_jax.analysis.one_layer.gd import Trajectory, gd_trajectory, moving_average, twin_divergence
from eos_jax.analysis.one_layer.problem import (
    checkerboard,
    curvature_along,
    data_loss,
    hvp,
    initial_kernel,
    logit,
    loss,
    responses,
)
from eos_jax.analysis.one_layer.regions import (
    NEUTRAL_RATE_TOL,
    REGION_THRESHOLD,
    REGIONS,
    SPAN_RTOL,
    RegionalSpectra,
    classify_positions,
    gram_apply,
    gram_matrix,
    num_valid_positions,
    patch_span,
    region_counts,
    region_sequence,
    region_signature,
    regional_spectra,
    run_transitioning_pde,
    transitioning_rhs,
    window_sums,
)

__all__ = [
    "BLOWUP_ENVELOPE_GROWTH",
    "CONVERGED_RELATIVE_STEP",
    "EQUILIBRIUM_GRADIENT_TOL",
    "MIN_CLASSIFY_STEPS",
    "NEUTRAL_RATE_TOL",
    "REGIONS",
    "REGION_THRESHOLD",
    "SPAN_RTOL",
    "TAIL_FRACTION",
    "EquilibriumNotFound",
    "RegionalSpectra",
    "RunDiagnosis",
    "Thresholds",
    "Trajectory",
    "checkerboard",
    "classify_positions",
    "classify_run",
    "curvature_along",
    "data_loss",
    "diagnose",
    "find_equilibrium",
    "free_component_norms",
    "gd_trajectory",
    "gram_apply",
    "gram_matrix",
    "hessian_extreme_eigenvalues",
    "hvp",
    "initial_kernel",
    "logit",
    "loss",
    "moving_average",
    "num_valid_positions",
    "patch_span",
    "predicted_thresholds",
    "region_counts",
    "region_sequence",
    "region_signature",
    "regional_spectra",
    "responses",
    "run_transitioning_pde",
    "step_curvatures",
    "tail_start",
    "transitioning_rhs",
    "twin_divergence",
    "window_sums",
]
