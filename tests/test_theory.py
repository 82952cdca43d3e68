"""The paper's Section 4 as tests (docs/paper.md, section 4): stability bounds, the one-layer
PDE, restrained instability.

Every fp64 test runs inside `jax.enable_x64(True)` (the test session is fp32 by default).
Tolerances are stated where they are used, with the reason.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax import bits
from eos_jax.analysis import one_layer, pde
from eos_jax.models.activations import swish
from eos_jax.models.one_layer import OneLayerConv, valid_correlation_fft

ALPHA = 20.0
STEPS = 1000


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def checkerboard():
    return one_layer.checkerboard(256), one_layer.initial_kernel(32, seed=7, std=1.0)


@pytest.fixture(scope="module")
def span(checkerboard):
    """The checkerboard's patch span, computed once (seconds) for every diagnose call."""
    with jax.enable_x64(True):
        return one_layer.patch_span(checkerboard[0], (32, 32))


@pytest.fixture(scope="module")
def sum_spectra(checkerboard):
    with jax.enable_x64(True):
        return one_layer.regional_spectra(checkerboard[0], (32, 32), normalization="sum")


# --- Forward Euler and von Neumann bounds -----------------------------------------------------


def test_max_stable_dt_and_alpha_window_on_known_spectra():
    assert pde.max_stable_dt([1.0, 4.0]) == 0.5
    assert pde.max_stable_dt([-1.0, 4.0]) == 0.0  # a growing mode: no dt is stable
    assert pde.max_stable_dt([1 + 1j]) == pytest.approx(1.0)  # |1 - (1 + i)| = 1: neutral
    assert pde.alpha_window([-3.0, 0.0, 5.0], dt=0.1) == (3.0, 15.0)
    np.testing.assert_allclose(pde.amplification_factors([0.0, 2.0, 5.0], 0.4), [1.0, 0.2, -1.0])


def test_fourier_eigenvalues_diagonalise_periodic_convolutions():
    rng = np.random.RandomState(0)
    stencil = rng.randn(3, 3)
    grid = (6, 5)
    n = int(np.prod(grid))

    def apply(u):  # (stencil (*) u)(x) = sum_j stencil[c + j] u(x + j), periodic
        return sum(
            stencil[1 + a, 1 + b] * jnp.roll(u, (-a, -b), axis=(0, 1))
            for a in (-1, 0, 1)
            for b in (-1, 0, 1)
        )

    matrix = pde.operator_matrix(apply, grid)
    expected = np.linalg.eigvals(matrix)
    got = pde.fourier_eigenvalues(stencil, grid)
    # Same multiset (1e-12: rounding of 30x30 eigen-solves of O(1) entries).
    for lam in got.ravel():
        assert np.min(np.abs(expected - lam)) < 1e-12
    np.testing.assert_allclose(pde.fourier_diagonal(matrix, grid), got.ravel(), atol=1e-12)
    assert matrix.shape == (n, n)


def test_heat_equation_bound_is_one_half():
    assert pde.heat_von_neumann_dt() == pytest.approx(0.5, abs=1e-15)
    # Finite grid with fixed ends: lambda_max = 4 sin^2(29 pi / 60), closed form.
    exact = 2 / (4 * np.sin(29 * np.pi / 60) ** 2)
    assert pde.heat_dirichlet_dt(31) == pytest.approx(exact, rel=1e-13)
    u0 = pde.heat_initial_condition(31)
    assert u0[0] == u0[-1] == 0 and u0[15] == 1.5
    stable = pde.forward_euler(pde.heat_rhs, u0, 0.4, 40)
    unstable = pde.forward_euler(pde.heat_rhs, u0, 0.8, 40)
    assert np.max(np.abs(stable[-1])) < np.max(np.abs(u0))
    assert np.max(np.abs(unstable[-1])) > 1e6 * np.max(np.abs(u0))
    # After 40 steps the top mode (factor -2.191) dominates the next (-2.174) by (2.191/2.174)^40
    # ~ 1.4 only, so the measured rate is within 1% rather than exact.
    predicted = pde.max_amplification(pde.dense_eigenvalues(pde.heat_dirichlet_matrix(31)), 0.8)
    assert pde.observed_growth_rate(unstable) == pytest.approx(predicted, rel=1e-2)


def test_observed_growth_rate_needs_three_steps_and_reads_an_early_blowup_as_inf():
    u = 2.0 ** np.arange(4.0)  # steps 1, 2, 4: growth 2 per step
    assert pde.observed_growth_rate(u) == pytest.approx(2.0, rel=1e-15)
    for short in (u[:1], u[:2], u[:3]):
        with pytest.raises(ValueError, match="at least 3 steps"):
            pde.observed_growth_rate(short)
    blown = np.array([0.0, 1.0, 1e300, np.inf, np.nan, np.nan])  # 2 finite steps, then inf
    assert pde.observed_growth_rate(blown) == np.inf


def test_forward_euler_multiplies_each_eigenmode_by_its_amplification_factor():
    x = np.arange(31)
    mode = np.sin(3 * np.pi * x / 30)  # eigenvector of the Dirichlet Laplacian, zero at the ends
    lam = 4 * np.sin(3 * np.pi / 60) ** 2
    u = pde.forward_euler(pde.heat_rhs, mode, 0.8, 1)
    # One step is exact up to a few roundings of O(1) numbers.
    np.testing.assert_allclose(u[1], pde.amplification_factors(lam, 0.8) * mode, atol=1e-14)


def test_analysis_refuses_float32():
    with jax.enable_x64(False), pytest.raises(RuntimeError, match="float64"):
        pde.require_float64()


# --- The one-layer model and its PDE -------------------------------------------------------


def test_fft_and_direct_correlation_models_agree():
    rng = np.random.RandomState(1)
    images, kernel = jnp.asarray(rng.randn(2, 40, 40)), jnp.asarray(rng.randn(8, 8))
    outputs = [
        OneLayerConv(8, correlation=c, dtype=jnp.float64, param_dtype=jnp.float64).apply(
            {"params": {"kernel": kernel}}, images
        )
        for c in ("direct", "fft")
    ]
    # Two summation orders of 64 products of O(1) numbers: ~1e-15 apart, 1e-12 leaves room.
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-12)


def swish_derivative(z, beta: float = 1.0):
    """s'(z) = sigmoid(beta z) + beta z sigmoid(beta z) (1 - sigmoid(beta z))."""
    sig = jax.nn.sigmoid(beta * z)
    return sig + beta * z * sig * (1 - sig)


def pde_rhs(kernel, image, alpha, beta: float = 1.0, label=1.0):
    """The paper's closed form dK/dt = -a(K) mean_x[s'(z(x)) I(x + y)] - alpha K, a =
    sigmoid(p) - y: what autodiff's gradient must equal."""
    z = one_layer.responses(kernel, image)
    a = jax.nn.sigmoid(jnp.mean(swish(z, beta))) - label
    weighted_input = valid_correlation_fft(image[None], swish_derivative(z, beta))[0] / z.size
    return -a * weighted_input - alpha * kernel


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_autodiff_gradient_equals_closed_form_pde_rhs(checkerboard, label):
    image, kernel0 = checkerboard
    rng = np.random.RandomState(3)
    cases = [(image, kernel0), (rng.randn(48, 48), 0.1 * rng.randn(8, 8))]
    for img, kernel in cases:
        img, kernel = jnp.asarray(img), jnp.asarray(kernel)
        grad = jax.grad(one_layer.loss)(kernel, img, ALPHA, 1.0, label)
        rhs = pde_rhs(kernel, img, ALPHA, 1.0, label)
        # fp64 precision: both are the same sums in different orders; 1e-14 of the largest
        # entry is ~50 ulps, far below any modelling error (which would be O(1) relative).
        np.testing.assert_allclose(grad, -rhs, rtol=0, atol=1e-14 * float(jnp.max(jnp.abs(grad))))


def test_checkerboard_alpha_window_is_computed_not_hard_coded(sum_spectra):
    # Every 32x32 patch is +-P: G = 225^2 P P^T, top eigenvalue 225^2 * 1024, the rest zero.
    assert sum_spectra.gram_eigenvalues.max() == pytest.approx(225**2 * 1024, rel=1e-12)
    assert np.max(np.real(sum_spectra.gram_fourier)) == pytest.approx(225**2 * 1024, rel=1e-12)
    alpha_min, alpha_max = pde.alpha_window(sum_spectra.transitioning, dt=1e-8)
    # The zero eigenvalues come out as +-3e-7 (rounding of 5e7-sized sums): 1e-12 relative.
    assert alpha_min == pytest.approx(1.296e7, rel=1e-12)
    assert alpha_max == pytest.approx(2e8, rel=1e-12)


def test_transitioning_operator_is_the_hessian_at_zero_up_to_the_dropped_mean_term():
    """Table 2's operator (a0 beta/2) G/N + alpha is H(0) minus (1/16) Ibar Ibar^T; by Weyl's
    inequality each eigenvalue may move by at most |Ibar|^2 / 16 (a non-hard-coded check on an
    image that is not a checkerboard)."""
    rng = np.random.RandomState(5)
    image = rng.randn(24, 24) + 0.3  # nonzero mean: the dropped term is not negligible
    kernel_shape = (6, 6)
    spectra = one_layer.regional_spectra(image, kernel_shape)
    hessian = jax.hessian(one_layer.loss)(jnp.zeros(kernel_shape), jnp.asarray(image), ALPHA)
    exact = np.linalg.eigvalsh(np.asarray(hessian).reshape(36, 36))
    mean_input = np.asarray(one_layer.window_sums(jnp.asarray(image), kernel_shape)) / 19**2
    weyl = float(np.sum(mean_input**2)) / 16
    np.testing.assert_array_less(np.abs(exact - (ALPHA + spectra.transitioning)), weyl + 1e-12)


def test_regions_of_the_checkerboard(checkerboard):
    image, _ = checkerboard
    zero = one_layer.region_counts(np.zeros((32, 32)), image)
    assert zero == {"activated": 0, "transitioning": 225**2, "not_activated": 0}
    pattern = image[:32, :32] * (5.0 / 1024)  # response +-5 everywhere, beyond the threshold 3
    counts = one_layer.region_counts(pattern, image)
    assert counts == {"activated": 25313, "transitioning": 0, "not_activated": 25312}
    assert one_layer.region_signature(counts) == "A+N"


# --- Restrained instability at alpha = 20 (Figure 4) -------------------------------------


@pytest.fixture(scope="module")
def thresholds(checkerboard):
    with jax.enable_x64(True):
        return one_layer.predicted_thresholds(checkerboard[1], checkerboard[0], ALPHA)


def test_predicted_thresholds_at_alpha_20(thresholds, checkerboard):
    assert thresholds.equilibrium_gradient_norm <= one_layer.EQUILIBRIUM_GRADIENT_TOL
    assert thresholds.weight_decay_lr == pytest.approx(0.1, rel=1e-15)
    assert thresholds.transitioning_lr == 0.0  # anti-diffusive: unstable for every lr
    assert thresholds.free_directions == 32 * 32 - 1  # patches span only the checkerboard
    # REFERENCE: c* ~ 3.865, loss 0.29149, curvature ~62 at K*, local limit ~0.032.
    assert thresholds.equilibrium_response == pytest.approx(3.865, abs=5e-4)
    assert thresholds.equilibrium_loss == pytest.approx(0.29149, abs=5e-6)
    assert thresholds.equilibrium_hessian[1] == pytest.approx(62, abs=0.1)
    assert thresholds.equilibrium_hessian[0] == pytest.approx(ALPHA, rel=1e-9)
    assert thresholds.equilibrium_lr == pytest.approx(2 / 62, rel=2e-3)
    # Curvature along the checkerboard direction at K = 0: alpha - 256 = -236 (REFERENCE).
    image = jnp.asarray(checkerboard[0])
    direction = jnp.asarray(checkerboard[0][:32, :32])
    curvature = one_layer.curvature_along(jnp.zeros((32, 32)), direction, image, ALPHA)
    assert float(curvature) == pytest.approx(-236, abs=1e-6)
    predicted = [thresholds.predicted_class(lr) for lr in (0.01, 0.03, 0.05, 0.09, 0.1, 0.11)]
    expected = ["converging", "converging", "restrained", "restrained", "neutral", "blow-up"]
    assert predicted == expected


def test_unconverged_equilibrium_is_an_error_not_a_threshold():
    image, kernel0 = one_layer.checkerboard(24), one_layer.initial_kernel(6)
    with pytest.raises(one_layer.EquilibriumNotFound, match=r"no equilibrium found.*\|grad\|"):
        one_layer.find_equilibrium(kernel0, image, ALPHA, maxiter=1)
    assert issubclass(one_layer.EquilibriumNotFound, ValueError)  # one line from the mains
    _, gradient_norm = one_layer.find_equilibrium(kernel0, image, ALPHA)
    assert gradient_norm <= one_layer.EQUILIBRIUM_GRADIENT_TOL


def test_lr_001_and_003_converge_to_the_same_loss(checkerboard, span):
    image, kernel0 = checkerboard
    finals = []
    for lr in (0.01, 0.03):
        run = one_layer.gd_trajectory(kernel0, image, lr=lr, alpha=ALPHA, steps=STEPS)
        assert one_layer.diagnose(run, image, span=span).run_class == "converging"
        # Monotone up to the loss's own rounding (a mean of 50625 terms: ~1e-15 noise).
        assert np.max(np.diff(run.losses)) < 1e-14
        finals.append(run.losses[-1])
    assert finals[0] == pytest.approx(0.29149, abs=5e-6)  # REFERENCE's 5 digits
    assert finals[1] == pytest.approx(finals[0], rel=1e-12)  # same fixed point


# 0.05 and 0.09 in make test-slow (~8 s each): the same code path as 0.07.
@pytest.mark.parametrize(
    "lr, peak",
    [
        pytest.param(0.05, 1.109, marks=pytest.mark.slow),
        (0.07, 2.002),
        pytest.param(0.09, 3.162, marks=pytest.mark.slow),
    ],
)
def test_lr_005_to_009_oscillate_but_stay_bounded(checkerboard, span, lr, peak):
    image, kernel0 = checkerboard
    run = one_layer.gd_trajectory(kernel0, image, lr=lr, alpha=ALPHA, steps=STEPS)
    diagnosis = one_layer.diagnose(run, image, span=span)
    assert diagnosis.run_class == "restrained"
    assert diagnosis.unstable_step_fraction > 0.2  # steps beyond the local bound persist
    low, high = diagnosis.tail_loss_range
    # REFERENCE: loss peaks of order 1-3. The peaks are the overshoot of the 1-D map along
    # the checkerboard direction, reproducible to ~1% whatever the rounding history.
    assert low == pytest.approx(0.2915, abs=2e-4)
    assert high == pytest.approx(peak, rel=0.02)
    signatures = {s for s, _, _ in one_layer.region_sequence(run, image)}
    assert signatures == {"T", "A+N"}  # it keeps crossing between regions


@pytest.mark.parametrize("lr", [0.11, 0.13])
def test_lr_above_01_blows_up(checkerboard, span, lr):
    image, kernel0 = checkerboard
    run = one_layer.gd_trajectory(kernel0, image, lr=lr, alpha=ALPHA, steps=400)
    assert one_layer.diagnose(run, image, span=span).run_class == "blow-up"
    assert not np.isfinite(run.kernel_norms[-1]) or run.kernel_norms[-1] > 1e20


def test_twin_divergence_rounding_level_then_amplified(checkerboard):
    image, kernel0 = checkerboard
    twins = {
        lr: [
            one_layer.gd_trajectory(kernel0, image, lr=lr, alpha=ALPHA, steps=steps, k=k)
            for k in (1, 3)
        ]
        for lr, steps in ((0.01, 300), (0.05, 200))
    }
    small = one_layer.twin_divergence(*twins[0.01])
    large = one_layer.twin_divergence(*twins[0.05])
    assert small[1] > 0 and large[1] > 0  # k = 3 really changes the first update's bits
    # Rounding level: a few ulps (relative 1e-16 each) of disagreement, never amplified.
    assert np.max(one_layer.moving_average(small, 100)) < 1e-14
    assert np.max(one_layer.moving_average(large, 100)) > 0.1  # amplified to O(1)
    assert np.argmax(large > 1e-3) < 150  # within ~100 iterations (REFERENCE)


def test_blown_up_twin_reads_as_maximal_divergence_not_rounding_level():
    rng = np.random.RandomState(0)
    kernels = rng.randn(6, 3, 3)
    nudged = kernels * (1 + 1e-16 * rng.randn(6, 3, 3))
    blown = nudged.copy()
    blown[3, 0, 0] = np.inf  # blow-up at step 3, NaN padding after (as gd_trajectory does)
    blown[4:] = np.nan
    first, second, third = (
        one_layer.Trajectory(k, np.zeros(6), 0.1, 1.0, 1) for k in (kernels, nudged, blown)
    )
    divergence = one_layer.twin_divergence(first, third)
    # Finite iterates: the paper's rel-L1, as bits.diff_stats computes it.
    expected = [bits.diff_stats(kernels[t], nudged[t])["rel_l1"] for t in range(6)]
    np.testing.assert_allclose(one_layer.twin_divergence(first, second), expected, rtol=1e-12)
    np.testing.assert_allclose(divergence[:3], expected[:3], rtol=1e-12)
    assert np.max(divergence[:3]) < 1e-14  # rounding level before the blow-up
    assert divergence[3] == pytest.approx(2 / 9, rel=1e-12)  # 1 of 9 entries is inf: rel 1
    np.testing.assert_array_equal(divergence[4:], 2.0)  # every entry fully different
    assert np.all(np.isfinite(one_layer.moving_average(divergence, 3)))
    assert one_layer.moving_average(divergence, 3)[-1] > 1  # amplified, not rounding level
    assert third.blowup_step == 3 and first.blowup_step == -1
    # Two twins that blew up identically to inf are equal there, not different.
    same = one_layer.Trajectory(np.full((2, 1, 1), np.inf), np.zeros(2), 0.1, 1.0, 1)
    np.testing.assert_array_equal(one_layer.twin_divergence(same, same), 0.0)


# --- The classification rule on synthetic runs ------------------------------------------------


def _synthetic(norm_of_step, lr=0.1):
    """A 1x1 'kernel' trajectory with |K_t| = norm_of_step(t), 100 steps."""
    values = np.array([norm_of_step(t) for t in range(101)], float)
    return one_layer.Trajectory(values[:, None, None], values**2, lr, 1.0, 1)


@pytest.mark.parametrize(
    "norms, curvature, expected",
    [
        (lambda t: 1 + 0.5**t, 1.0, "converging"),  # settles: steps vanish
        (lambda t: 1 + 0.99**t, 1.0, "converging"),  # still moving, but every step is stable
        (lambda t: 1.0 + 0.5 * (t % 2), 30.0, "restrained"),  # bounded, lr*kappa = 3 > 2
        (lambda t: 1.1**t, 30.0, "blow-up"),  # envelope grows 1.1^25 ~ 11x per quarter
        (lambda t: np.inf if t > 50 else 1.0, 1.0, "blow-up"),
    ],
)
def test_classification_rule(norms, curvature, expected):
    run = _synthetic(norms)
    tail = np.full(100 - one_layer.tail_start(run), curvature)
    assert one_layer.classify_run(run, tail).run_class == expected


@pytest.mark.parametrize(
    "free, norms, expected",
    [
        (lambda t: 3.0, lambda t: 1.0 + 0.5 * (t % 2), "neutral"),  # free part keeps its norm
        (lambda t: 3.0 * 0.999**t, lambda t: 1.0 + 0.5 * (t % 2), "restrained"),  # damped
        (lambda t: 0.0, lambda t: 1.0 + 0.5 * (t % 2), "restrained"),  # no free component
        (lambda t: 3.0, lambda t: 1.1**t, "blow-up"),  # a blow-up elsewhere comes first
    ],
)
def test_classification_rule_neutral(free, norms, expected):
    run = _synthetic(norms)
    tail = np.full(100 - one_layer.tail_start(run), 30.0)
    free_norms = np.array([free(t) for t in range(101)])
    assert one_layer.classify_run(run, tail, free_norms).run_class == expected


def test_run_at_lr_two_over_alpha_is_neutral():
    """At lr = 2/alpha GD multiplies the free component (orthogonal to every patch) by
    1 - lr*alpha = -1: its norm stays, whatever the data part does. Just below 2/alpha the
    factor is 0.998, damped 2e-3 per step, far outside the neutral band."""
    image, kernel0 = one_layer.checkerboard(24), one_layer.initial_kernel(6)
    span = one_layer.patch_span(image, (6, 6))
    assert span.shape == (36, 1)  # the checkerboard's patches are all +-P
    neutral = one_layer.gd_trajectory(kernel0, image, lr=0.1, alpha=ALPHA, steps=40)
    diagnosis = one_layer.diagnose(neutral, image, span=span)
    assert diagnosis.run_class == "neutral"
    assert abs(diagnosis.free_rate - 1) < 1e-14  # measured 2e-16: rounding only
    below = one_layer.gd_trajectory(kernel0, image, lr=0.0999, alpha=ALPHA, steps=40)
    diagnosis = one_layer.diagnose(below, image, span=span)
    assert diagnosis.run_class != "neutral"
    assert diagnosis.free_rate == pytest.approx(0.998, rel=1e-12)


def test_classification_needs_four_steps():
    values = np.array([1.0, 1.5, 1.0, 1.5, 1.0])
    run = one_layer.Trajectory(values[:, None, None], values, 0.1, 1.0, 1)
    assert one_layer.classify_run(run, np.full(1, 30.0)).run_class == "restrained"
    short = one_layer.Trajectory(run.kernels[:4], values[:4], 0.1, 1.0, 1)
    with pytest.raises(ValueError, match="at least 4 steps, got 3"):
        one_layer.classify_run(short, np.full(1, 30.0))


# --- Physics checks that catch factor errors in the PDEs and their spectra -------------------


@pytest.mark.parametrize("alpha", [1.1e7, 1.3e7, 1.9e8, 2.0e8, 2.2e8])
def test_figure3_runs_grow_each_mode_by_one_minus_lr_lambda(checkerboard, sum_spectra, alpha):
    """Forward Euler on Table 2's PDE multiplies each eigenmode of its operator by 1 - lr*lambda.

    The steps d_t = K_{t+1} - K_t obey d_{t+1} = (I - lr A) d_t, so the per-step factor of each
    mode is read off the run itself. On the checkerboard A has two eigenspaces: the patch
    direction P (lambda = alpha + the transitioning eigenvalue, -1.296e7) and its orthogonal
    complement (lambda = alpha: the data term never acts there).
    """
    image, kernel0 = checkerboard
    lr = 1e-8
    iterates = one_layer.run_transitioning_pde(kernel0, image, alpha=alpha, dt=lr, steps=6)
    steps = np.diff(iterates, axis=0).reshape(6, -1)
    patch = image[:32, :32].ravel() / 32.0  # unit vector: every patch of the image is +-P
    along = steps @ patch
    across = steps - np.outer(along, patch)
    observed_top = along[1:] / along[:-1]
    observed_free = np.sum(across[1:] * across[:-1], axis=1) / np.sum(across[:-1] ** 2, axis=1)
    predicted_top, predicted_free = pde.amplification_factors(
        alpha + np.array([sum_spectra.transitioning.min(), 0.0]), lr
    )
    # Measured agreement: 5e-12 relative (rounding of sums of ~5e7-sized terms). 1e-9 leaves
    # room for other platforms; a modelling error (a factor 2 in the PDE) moves them by O(1).
    np.testing.assert_allclose(observed_top, predicted_top, rtol=1e-9)
    np.testing.assert_allclose(observed_free, predicted_free, rtol=1e-9)


def test_activated_region_constant_is_the_hessian_of_the_loss_there():
    """In the activated region s(z) = z, so p = <K, Ibar> and the data Hessian is
    sigmoid'(p) Ibar Ibar^T: one eigenvalue sigmoid'(p) |Ibar|^2, the rest 0. Table 3 linearises
    a = sigmoid(p) - y at p = 0 (sigmoid'(0) = 1/4), so the library's activated eigenvalue must
    equal the Hessian's top data eigenvalue scaled by (1/4) / sigmoid'(p).

    beta = 1000 puts every position deep in the activated region (beta z >= 70: s''(z) ~ e^-70,
    negligible) while p stays near 0, where the linearisation of a is made.
    """
    rng = np.random.RandomState(4)
    image = 1.0 + 0.5 * rng.rand(24, 24)  # positive: mean input Ibar far from 0
    kernel = np.full((6, 6), 0.002)
    beta = 1000.0
    z = np.asarray(one_layer.responses(jnp.asarray(kernel), jnp.asarray(image)))
    assert np.all(one_layer.classify_positions(z, beta) == 1) and beta * z.min() > 70
    p = float(one_layer.logit(jnp.asarray(kernel), jnp.asarray(image), beta))
    assert abs(p) < 0.2  # near the linearisation point p = 0
    hessian = jax.hessian(one_layer.loss)(jnp.asarray(kernel), jnp.asarray(image), ALPHA, beta)
    exact = np.linalg.eigvalsh(np.asarray(hessian).reshape(36, 36)) - ALPHA
    spectra = one_layer.regional_spectra(image, (6, 6), beta)
    sigmoid_slope = float(jax.nn.sigmoid(p) * (1 - jax.nn.sigmoid(p)))
    # Measured agreement: 6e-14 on eigenvalues of 0 and 14.19 (rounding of the fp64 Hessian and
    # of subtracting alpha = 20). 1e-10 leaves room; a wrong constant moves the top one by O(1).
    np.testing.assert_allclose(
        spectra.activated, np.sort(exact) * 0.25 / sigmoid_slope, rtol=0, atol=1e-10
    )
