"""Ensemble statistics: interval coverage on synthetic normal data, Jordan's null, edge cases."""

import math

import numpy as np
import pytest

from eos_jax.analysis import statistics as st


def coverage(make_interval, truth, repetitions=400, seed=0):
    """Fraction of repetitions whose interval covers `truth`; make_interval(rng) -> Estimate."""
    rng = np.random.default_rng(seed)
    hits = [(e := make_interval(rng)).low <= truth <= e.high for _ in range(repetitions)]
    return float(np.mean(hits))


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


def test_bootstrap_std_undercovers_with_few_members_which_is_why_normal_is_default():
    def boot(n):
        return lambda rng: st.std_interval(
            rng.normal(0, 1, n), method="bootstrap", resamples=500, seed=rng.integers(2**31)
        )

    assert coverage(boot(6), 1.0, repetitions=300) < 0.75
    assert 0.8 <= coverage(boot(40), 1.0, repetitions=300) <= 0.97


def test_bootstrap_ratio_resamples_both_groups_and_is_reproducible():
    a, b = [0.97, 0.975, 0.972, 0.969], [0.96, 0.98, 0.97, 0.965, 0.99]
    first = st.std_ratio_interval(a, b, method="bootstrap", resamples=2000, seed=1)
    again = st.std_ratio_interval(a, b, method="bootstrap", resamples=2000, seed=1)
    other = st.std_ratio_interval(a, b, method="bootstrap", resamples=2000, seed=2)
    assert first == again and first != other
    assert first.sizes == (4, 5) and first.low < first.value < first.high
    assert first.value == pytest.approx(np.std(a) / np.std(b))


def test_independent_errors_std_matches_hand_computation():
    correct = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0]], dtype=bool)
    # error rates per example 0, 1/3, 2/3, 1/3 -> sum p(1-p) = 3 * 2/9; n = 4
    assert st.independent_errors_std(correct) == pytest.approx(math.sqrt((2 / 3) / 16))
    assert st.independent_errors_std(np.ones((5, 10))) == 0.0


def test_all_equal_values_give_zero_std_and_interval():
    for method in st.METHODS:
        estimate = st.std_interval([0.9] * 6, method=method, resamples=100)
        assert (estimate.value, estimate.low, estimate.high) == (0.0, 0.0, 0.0)


def test_zero_denominator_is_inf_and_zero_over_zero_is_nan():
    for method in st.METHODS:
        spread = st.std_ratio_interval([1, 2, 3], [5, 5, 5], method=method, resamples=100)
        assert spread.value == spread.low == spread.high == math.inf
        flat = st.std_ratio_interval([5, 5], [5, 5], method=method, resamples=100)
        assert math.isnan(flat.value) and math.isnan(flat.low) and math.isnan(flat.high)


def test_verdict_line():
    estimate = st.std_ratio_interval([0.97, 0.975, 0.972], [0.96, 0.98, 0.97])
    line = st.format_estimate("rounding/seed accuracy-std ratio", estimate)
    ratio = np.std([0.97, 0.975, 0.972]) / np.std([0.96, 0.98, 0.97])
    assert line.startswith(f"rounding/seed accuracy-std ratio {ratio:.2f} [")
    assert line.endswith("] (95% CI, normal, 3+3 members)")
    estimate = st.Estimate(0.714, 0.45, 1.1, 0.9, "bootstrap", (6, 6))
    assert (
        st.format_estimate("r", estimate) == "r 0.71 [0.45, 1.10] (90% CI, bootstrap, 6+6 members)"
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: st.std_interval([0.9]), r"values has shape \(1,\)"),
        (lambda: st.std_interval([[0.9, 0.8]]), r"values has shape \(1, 2\)"),
        (lambda: st.std_interval([0.9, float("nan")]), r"non-finite values: \[nan\]"),
        (lambda: st.std_interval([0.9, 0.8], confidence=95), "confidence=95"),
        (lambda: st.std_interval([0.9, 0.8], method="exact"), "unknown method 'exact'"),
        (lambda: st.mean_interval([0.9, 0.8], resamples=0), "resamples=0"),
        (lambda: st.std_ratio_interval([1, 2], [3]), r"denominator has shape \(1,\)"),
        (lambda: st.independent_errors_std([1, 0]), r"correct has shape \(2,\)"),
        (lambda: st.independent_errors_std([[1, 2]]), "other than 0/1"),
    ],
)
def test_bad_input_is_a_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "low, high, words",
    [(0.4, 0.97, "less than a new seed"), (1.1, 2.0, "more than"), (0.6, 1.3, "contains 1")],
)
def test_against_one_reads_the_interval_in_words(low, high, words):
    estimate = st.Estimate(0.8, low, high, 0.95, "normal", (12, 12))
    assert words in st.against_one(estimate)
