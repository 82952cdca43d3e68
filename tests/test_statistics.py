"""Ensemble statistics: known answers for fixed samples (quantiles from printed tables),
interval coverage by simulation, Jordan's unbiased distribution-level estimator, the nested
(over bases) interval, and the words a ratio is read in."""

import dataclasses
import math
import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.stats

from eos_jax.analysis import statistics as st

# Printed-table quantiles (any statistics textbook), not computed by the code under test.
CHI2_5 = (0.8312, 12.8325)  # chi-square, 5 df: 2.5% and 97.5% points
F_5_7 = (1 / 6.8531, 5.2852)  # F(5, 7): 2.5% point = 1 / F_0.975(7, 5), and 97.5% point
T_7 = 2.3646  # Student t, 7 df, 97.5% point
T_5 = 2.5706  # Student t, 5 df, 97.5% point

SIX = [0.912, 0.918, 0.905, 0.921, 0.915, 0.909]
EIGHT = [0.90, 0.95, 0.93, 0.91, 0.96, 0.92, 0.94, 0.97]


def coverage(make_interval, truth, repetitions=400, seed=0):
    """Fraction of repetitions whose interval covers `truth`; make_interval(rng) -> Estimate."""
    rng = np.random.default_rng(seed)
    hits = [(e := make_interval(rng)).low <= truth <= e.high for _ in range(repetitions)]
    return float(np.mean(hits))


# --- known answers ----------------------------------------------------------------------


def test_normal_intervals_match_printed_tables():
    n, var = len(SIX), np.var(SIX, ddof=1)
    std = st.std_interval(SIX)
    assert std.value == pytest.approx(np.std(SIX))
    assert (std.low, std.high) == pytest.approx(
        (math.sqrt(5 * var / CHI2_5[1]), math.sqrt(5 * var / CHI2_5[0])), rel=2e-4
    )
    ratio = st.std_ratio_interval(SIX, EIGHT)
    unbiased = math.sqrt(var / np.var(EIGHT, ddof=1))
    assert (ratio.low, ratio.high) == pytest.approx(
        (unbiased / math.sqrt(F_5_7[1]), unbiased / math.sqrt(F_5_7[0])), rel=2e-4
    )
    mean = st.mean_interval(SIX)
    half = T_5 * math.sqrt(var / n)
    assert (mean.low, mean.high) == pytest.approx((np.mean(SIX) - half, np.mean(SIX) + half))


def test_spread_parts_match_hand_computation():
    correct = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0]], dtype=bool)
    s = st.spread(correct)
    # accuracies 3/4, 2/4, 3/4: ddof=1 variance 1/48; right per example 3, 2, 1, 2 of 3 runs:
    # k(3 - k) / (3 * 2) = 0, 1/3, 1/3, 1/3 -> noise = (1/3 + 1/3 + 1/3) / 4^2 = 1/16.
    assert s.observed == pytest.approx(1 / 48)
    assert s.noise == pytest.approx(1 / 16)
    assert s.distribution == pytest.approx((1 / 48 - 1 / 16) / (1 - 1 / 4))
    assert st.independent_errors_std(correct) == pytest.approx(math.sqrt(1 / 16))
    assert st.independent_errors_std(np.ones((5, 10))) == 0.0


def test_examples_jackknife_leaves_out_each_group_in_turn():
    """The jackknife replicates are the estimator on the set less each of EXAMPLE_GROUPS
    groups (recomputed here on the smaller matrices); examples_var is (G - 1) / G x the sum
    of squared deviations less the interaction (2 noise^2 + 4 noise x distribution) / (N - 1);
    a pooled spread has none."""
    rng = np.random.default_rng(3)
    correct = rng.random((7, 45)) < rng.uniform(0.3, 0.95, 45)
    s = st.spread(correct)
    groups = np.array_split(np.arange(45), st.EXAMPLE_GROUPS)
    by_hand = [st.spread(np.delete(correct, g, axis=1)).distribution for g in groups]
    np.testing.assert_allclose(s.jackknife, by_hand, rtol=1e-12)
    g = len(by_hand)
    jackknife = (g - 1) / g * np.sum((np.array(by_hand) - np.mean(by_hand)) ** 2)
    interaction = (2 * s.noise**2 + 4 * s.noise * max(s.distribution, 0)) / 6
    assert s.interaction == pytest.approx(interaction, rel=1e-12)
    assert s.examples_var == pytest.approx(max(0.0, jackknife - interaction), rel=1e-12)
    other = st.spread(rng.random((5, 45)) < 0.7)
    assert st.pooled([s, other]).examples_var == 0.0


def test_pivotal_intervals_are_the_normal_ones_without_a_set_part():
    """One group, no finite-set part: the pivot gives the chi-square and F intervals; the
    draws' quantile error is ~0.3%, a wrong degree of freedom moves them by 10-25%."""
    six = st.Spread(float(np.var(SIX, ddof=1)), 0.0, 1000, len(SIX))
    eight = st.Spread(float(np.var(EIGHT, ddof=1)), 0.0, 1000, len(EIGHT))
    std = st.spread_std(six, "distribution")
    normal = st.std_interval(SIX)
    assert (std.low, std.high) == pytest.approx((normal.low, normal.high), rel=0.01)
    ratio = st.spread_ratio(six, eight, "set")
    f_interval = st.std_ratio_interval(SIX, EIGHT)
    assert (ratio.low, ratio.high) == pytest.approx((f_interval.low, f_interval.high), rel=0.01)
    assert ratio.sizes == (6, 8) and ratio.method == "pivotal"


def test_pooled_interval_is_log_t_over_bases():
    """Eight bases: the mean of their variances, its standard error across bases, and the
    Student t(7) interval on the log scale."""
    variances = np.array([1.0, 1.4, 0.7, 2.1, 0.9, 1.2, 1.6, 0.8]) * 1e-6
    bases = [st.Spread(float(v), 0.0, 1000, 4) for v in variances]
    p = st.pooled(bases)
    mean, se = variances.mean(), variances.std(ddof=1) / math.sqrt(8)
    assert (p.observed, p.base_se, p.runs, p.bases) == pytest.approx((mean, se, 32, 8))
    std = st.spread_std(p, "set")
    expected = [math.sqrt(mean * math.exp(sign * T_7 * se / mean)) for sign in (-1, 1)]
    assert (std.low, std.high) == pytest.approx(expected, rel=0.005)
    assert std.method == "nested over 8 bases"


def test_distribution_std_interval_subtracts_the_set_part_from_the_chi2_bounds():
    """Six runs, set part 4e-6 on 2,000 examples: the bounds are sqrt(((5 s^2 / chi2) - part)
    / (1 - 1/2000)) with the printed chi-square(5) points."""
    s = st.Spread(2e-5, 4e-6, 2000, 6)
    bounds = [math.sqrt((5 * 2e-5 / q - 4e-6) / (1 - 1 / 2000)) for q in CHI2_5[::-1]]
    e = st.spread_std(s, "distribution")
    assert e.value == pytest.approx(math.sqrt((2e-5 - 4e-6) / (1 - 1 / 2000)))
    assert (e.low, e.high) == pytest.approx(bounds, rel=0.01)


def test_nested_ratio_matches_its_pivot_integrated_numerically():
    """The nested ratio's bounds against an independent computation: the distribution of
    (mean over 8 bases) / (seed variance) under the two pivots, integrated with quad and
    inverted with brentq, not drawn."""
    variances = np.array([1.0, 1.4, 0.7, 2.1, 0.9, 1.2, 1.6, 0.8]) * 1e-6
    pooled = st.pooled([st.Spread(float(v), 0.0, 1000, 2) for v in variances])
    seeds = st.Spread(2.0e-6, 0.0, 1000, 16)
    m, c = pooled.observed, pooled.base_se / pooled.observed

    def cdf(r):  # P(A / B <= r), A = m exp(-c T), B = 15 s^2 / X, T ~ t(7), X ~ chi2(15)
        def given_x(x):
            a = r * seeds.observed * 15 / x
            return scipy.stats.t.sf(-math.log(a / m) / c, 7) * scipy.stats.chi2.pdf(x, 15)

        return scipy.integrate.quad(given_x, 0, np.inf, limit=200)[0]

    expected = [
        math.sqrt(scipy.optimize.brentq(lambda r, q=q: cdf(r) - q, 1e-3, 1e3))
        for q in (0.025, 0.975)
    ]
    e = st.spread_ratio(pooled, seeds, "set")
    assert (e.low, e.high) == pytest.approx(expected, rel=0.01)


# --- simulation -------------------------------------------------------------------------


def simulated_runs(rng, per_example, shifts):
    """Runs whose correctness on example x is Bernoulli(p(x) + shift of the run): the
    distribution-level accuracy of a run is mean(p) + its shift, so the known
    distribution-level variance is that of the shifts."""
    p = per_example[None, :] + np.asarray(shifts)[:, None]
    return rng.random(p.shape) < p


def per_example_rates(rng, examples, uncertain_fraction=0.125):
    """Like a trained net: most examples nearly always right, a fraction uncertain."""
    p = np.full(examples, 0.98)
    uncertain = rng.random(examples) < uncertain_fraction
    p[uncertain] = rng.uniform(0.05, 0.95, uncertain.sum())
    return p


def test_distribution_variance_is_unbiased_and_its_interval_covers():
    """500 studies of 24 runs on 10,000 examples, the set's part about as large as the
    distribution's: the estimate's mean is the truth within 3 standard errors, its 95%
    interval covers in >= 93%; the observed spread alone is biased by the set's part."""
    rng, tau, studies = np.random.default_rng(0), 0.002, 500
    estimates, observed, hits = [], [], 0
    for i in range(studies):
        per_example = per_example_rates(rng, 10_000)
        s = st.spread(simulated_runs(rng, per_example, rng.normal(0, tau, 24)))
        estimates.append(s.distribution)
        observed.append(s.observed)
        e = st.spread_std(s, "distribution", seed=i, draws=20_000)
        hits += e.low <= tau <= e.high
    mean, error = np.mean(estimates), np.std(estimates) / math.sqrt(studies)
    assert abs(mean - tau**2) < 3 * error, (mean / tau**2, error / tau**2)
    assert np.mean(observed) > tau**2 + 10 * error  # the set's part, left in
    assert 0.93 <= hits / studies <= 0.99


def test_distribution_interval_covers_over_draws_of_the_examples():
    """The run-to-run variation sits on the uncertain tenth of a population of examples (a
    run's shift moves only their rates), so the distribution-level std is tau x 0.1 and a
    2,000-example set holds its own share of uncertain examples. With 512 runs, the runs'
    pivot alone (the set read as fixed) covers < 90% of 500 studies; with the examples
    jackknife the interval covers >= 93%."""
    rng, tau, fraction, studies = np.random.default_rng(2), 0.03, 0.1, 500
    hits = fixed_hits = 0
    for i in range(studies):
        uncertain = rng.random(2_000) < fraction
        p = np.where(uncertain, rng.uniform(0.2, 0.8, 2_000), 0.995)
        shifts = np.where(uncertain[None, :], rng.normal(0, tau, 512)[:, None], 0.0)
        s = st.spread(rng.random(shifts.shape) < p[None, :] + shifts)
        e = st.spread_std(s, "distribution", seed=i, draws=20_000)
        hits += e.low <= tau * fraction <= e.high
        fixed = dataclasses.replace(s, jackknife=())
        e = st.spread_std(fixed, "distribution", seed=i, draws=20_000)
        fixed_hits += e.low <= tau * fraction <= e.high
    assert hits / studies >= 0.93
    assert fixed_hits / studies < 0.90


def test_nested_ratio_covers_where_one_base_does_not():
    """Rounding spreads that differ from base to base (log-normal std, log-sd 0.4, mean variance
    tau_r^2): the nested interval (8 bases x 6 twins) covers tau_r / tau_s in >= 93% of 500
    studies; 48 twins of one base, read as if they were the general case, do not."""
    rng, tau_r, tau_s, studies = np.random.default_rng(1), 0.003, 0.004, 500
    nested_hits = one_base_hits = 0
    for i in range(studies):
        per_example = per_example_rates(rng, 2_000, 0.03)
        seeds = st.spread(simulated_runs(rng, per_example, rng.normal(0, tau_s, 48)))
        base_sd = tau_r * np.exp(0.4 * rng.normal(size=8) - 0.4**2)
        bases = [
            st.spread(simulated_runs(rng, per_example, rng.normal(0, sd, 6))) for sd in base_sd
        ]
        nested = st.spread_ratio(st.pooled(bases), seeds, "distribution", seed=i, draws=20_000)
        nested_hits += nested.low <= tau_r / tau_s <= nested.high
        one = st.spread(simulated_runs(rng, per_example, rng.normal(0, base_sd[0], 48)))
        one_base = st.spread_ratio(one, seeds, "distribution", seed=i, draws=20_000)
        one_base_hits += one_base.low <= tau_r / tau_s <= one_base.high
    assert nested_hits / studies >= 0.93
    assert one_base_hits / studies < 0.85


def test_chi2_std_interval_covers_at_nominal_rate_with_6_members():
    rate = coverage(lambda rng: st.std_interval(rng.normal(0.9, 0.02, 6)), 0.02)
    assert 0.92 <= rate <= 0.98  # nominal 0.95; binomial sd over 400 repetitions ~0.011


def test_f_ratio_interval_covers_at_nominal_rate():
    rate = coverage(
        lambda rng: st.std_ratio_interval(rng.normal(0, 1, 6), rng.normal(0, 2, 6)), 0.5
    )
    assert 0.92 <= rate <= 0.98


def test_t_mean_interval_covers_at_nominal_rate():
    rate = coverage(lambda rng: st.mean_interval(rng.normal(0.1, 0.03, 5)), 0.1)
    assert 0.92 <= rate <= 0.98


# --- power ------------------------------------------------------------------------------


def test_ratio_width_shrinks_with_members_and_matches_the_f_interval():
    s = st.Spread(1e-6, 0.0, 1000, 24)
    wide, narrow = (st.ratio_width(s, s, 1, n, n, "set") for n in (12, 96))
    assert narrow < wide
    # 96 + 96 members, no set part: log-variance of each variance 2/95; F's own width
    f_interval = st.std_ratio_interval(np.arange(96.0), np.arange(96.0))
    assert narrow == pytest.approx(f_interval.high / f_interval.low, rel=0.05)
    # between-base variation does not shrink with more twins per base, only with more bases
    bases = st.Spread(1e-6, 0.0, 1000, 48, bases=8, base_se=0.5e-6)
    assert st.ratio_width(bases, s, 8, 60, 96, "set") > st.ratio_width(bases, s, 80, 6, 96, "set")


def test_ratio_width_of_a_barely_measured_spread_is_inf_without_an_overflow_warning():
    """A distribution-level variance of 1e-20 (an estimate that is all but 0: the Adam
    demo's twins) makes the log-variance enormous; the width is inf, printed as such, and
    numpy's overflow warning used to reach the user's terminal."""
    tiny = st.Spread(1e-6, 1e-6 - 1e-20, 100_000, 16)
    s = st.Spread(1e-6, 0.0, 1000, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert st.ratio_width(tiny, s, 8, 2, 16, "distribution") == np.inf


# --- edge cases and words ---------------------------------------------------------------


def test_all_equal_values_give_zero_std_and_interval():
    estimate = st.std_interval([0.9] * 6)
    assert (estimate.value, estimate.low, estimate.high) == (0.0, 0.0, 0.0)


def test_zero_denominator_is_inf_and_zero_over_zero_is_nan():
    spread = st.std_ratio_interval([1, 2, 3], [5, 5, 5])
    assert spread.value == spread.low == spread.high == math.inf
    flat = st.std_ratio_interval([5, 5], [5, 5])
    assert math.isnan(flat.value) and math.isnan(flat.low) and math.isnan(flat.high)


def test_a_negative_unbiased_variance_reads_as_zero_std():
    s = st.Spread(1e-6, 2e-6, 1000, 12)
    assert s.distribution < 0
    assert st.spread_std(s, "distribution").value == 0.0


def test_verdict_line():
    estimate = st.std_ratio_interval([0.97, 0.975, 0.972], [0.96, 0.98, 0.97])
    line = st.format_estimate("rounding/seed accuracy-std ratio", estimate)
    ratio = np.std([0.97, 0.975, 0.972]) / np.std([0.96, 0.98, 0.97])
    assert line.startswith(f"rounding/seed accuracy-std ratio {ratio:.2f} [")
    assert line.endswith("] (95% CI, normal, 3+3 members)")
    estimate = st.Estimate(0.714, 0.45, 1.1, 0.9, "nested over 6 bases", (36, 36))
    assert (
        st.format_estimate("r", estimate)
        == "r 0.71 [0.45, 1.10] (90% CI, nested over 6 bases, 36+36 members)"
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: st.std_interval([0.9]), r"values has shape \(1,\)"),
        (lambda: st.std_interval([[0.9, 0.8]]), r"values has shape \(1, 2\)"),
        (lambda: st.std_interval([0.9, float("nan")]), r"non-finite values: \[nan\]"),
        (lambda: st.std_interval([0.9, 0.8], confidence=95), "confidence=95"),
        (lambda: st.std_ratio_interval([1, 2], [3]), r"denominator has shape \(1,\)"),
        (lambda: st.independent_errors_std([1, 0]), r"correct has shape \(2,\)"),
        (lambda: st.spread([[1, 2], [0, 1]]), "other than 0/1"),
        (lambda: st.pooled([st.Spread(1, 0, 10, 3)]), "pooled needs >= 2"),
        (lambda: st.spread_std(st.Spread(1, 0, 10, 3), "test"), "level='test'; allowed"),
    ],
)
def test_bad_input_is_a_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "low, high, words",
    [
        (0.24, 0.97, "not more than a new seed (the interval ends below 1.25; the whole "),
        (0.27, 0.75, "less than a new seed (the whole interval is below the margin's 0.8; "),
        (0.27, 0.8, "not more than a new seed (the interval ends below 1.25; the whole "),
        (0.41, 1.05, "not more than a new seed (the interval ends below 1.25; the interval "),
        (0.85, 1.6, "not less than a new seed (the interval starts above 0.8; the interval "),
        (1.2, 2.0, "not less than a new seed (the interval starts above 0.8; the whole "),
        (1.3, 2.0, "more than a new seed (the whole interval is above the margin's 1.25; "),
        (0.85, 1.2, "as much as a new seed (within the equivalence margin [0.8, 1.25]; the "),
        (0.6, 1.3, "undecided at this size (the interval reaches past 0.8 and 1.25; the "),
    ],
)
def test_in_words_reads_two_one_sided_tests_against_the_margin(low, high, words):
    estimate = st.Estimate(0.9, low, high, 0.95, "normal", (12, 12))
    assert st.in_words(estimate).startswith(words)


def test_a_draw_where_both_spreads_vanish_counts_as_any_ratio():
    """Twins whose spread is all the set's part, against seeds whose own interval reaches 0:
    in the draws where both true stds are 0 the ratio is undetermined, so the upper bound is
    inf, not the 0 that the twins' zero draws alone would give."""
    twins = st.Spread(1e-6, 1e-5, 1000, 12)  # observed far below the set's part
    seeds = st.Spread(3e-6, 2e-6, 1000, 12)  # at or below 0 in P(chi2(11) > 16.5) = 12%
    assert st.spread_std(seeds, "distribution").low == 0
    ratio = st.spread_ratio(twins, seeds, "distribution")
    assert (ratio.value, ratio.low, ratio.high) == (0.0, 0.0, math.inf)


def test_a_ratio_of_two_unresolved_spreads_is_not_estimable():
    flat = st.Spread(1e-6, 2e-6, 1000, 12)
    ratio = st.spread_ratio(flat, flat, "distribution", draws=2_000)
    assert math.isnan(ratio.value) and ratio.high == math.inf
    assert "not estimable" in st.in_words(ratio)
