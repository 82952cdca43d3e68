"""Statistics of ensembles' final accuracies: spreads, their parts, and confidence intervals.

Two kinds of interval, each exact or checked by simulation (tests/test_statistics.py):

- Normal theory, for independent members whose accuracies are close to normal (Jordan
  2023): chi-square for a std (`std_interval`), F for a ratio of two stds
  (`std_ratio_interval`), Student t for a mean (`mean_interval`). Spreads are the paper's
  population std (ddof=0).
- Generalised pivotal quantities, for what normal theory cannot reach: a `Spread` splits
  the variance of accuracy across runs on one evaluation set of n examples into the
  distribution-level variance and the finite set's part, mean_x p(x)(1 - p(x)) / n, with
  p(x) the chance that a run gets example x right (Jordan 2023, "On the variance of neural
  network training with respect to test sets and distributions"); both are estimated
  without bias from the runs' per-example correctness. A spread can also be `pooled` over
  base trajectories (a nested design: R rounding twins of each of B bases, as the paper's
  Table 1), so that its interval covers the mean over bases, not one base's value.
  `spread_std` and `spread_ratio` draw the pivots of each part (chi-square for a group of
  independent runs; log-scale Student t with B - 1 degrees of freedom across bases) and
  read the interval off their quantiles. For one group and no finite-set part they are the
  chi-square and F intervals above. At the distribution level the set's examples are a
  sample too: which examples the set holds moves the estimate (most of the variance sits
  on a few uncertain examples), by an amount that more runs do not shrink. A
  delete-a-group jackknife over the examples (EXAMPLE_GROUPS groups) measures it; less the
  part of it that the runs' pivot already holds (each run's independent per-example
  errors, `Spread.interaction`), the distribution-level draws of a group of independent
  runs add it as a normal term (not of a pooled spread: see `pooled`).

A rounding/seed ratio is read in words (`in_words`) by two one-sided tests against an
equivalence margin [0.8, 1.25]: "not more than a new seed" when the interval ends below
1.25 ("less than a new seed" when below 0.8), "not less" when it starts above 0.8 ("more
than" when above 1.25), "as much as a new seed" when it lies inside the margin,
"undecided" otherwise (an interval that contains 1 does not show agreement); where the
interval stands against 1 is said beside it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.stats

# A rounding/seed std ratio inside this margin counts as "as much as a new seed".
EQUIVALENCE_MARGIN = (0.8, 1.25)
_DRAWS = 200_000  # pivot draws per interval: quantile error ~0.2%, a few ms
EXAMPLE_GROUPS = 20  # the examples jackknife: groups of examples left out in turn
LEVELS = ("set", "distribution")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point value with its confidence interval [low, high]; `sizes`: members per group."""

    value: float
    low: float
    high: float
    confidence: float
    method: str
    sizes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Spread:
    """The variance of accuracy across runs on one evaluation set, and its parts.

    observed: unbiased (ddof=1) variance of the runs' accuracies; pooled over bases, the
      mean of each base's. noise: unbiased estimate of the finite set's part,
      mean_x p(x)(1 - p(x)) / examples (0 when per-example correctness is unknown).
    runs, bases: how many runs in all, in how many groups (bases); base_se: the standard
      error of the pooled `observed` from its spread across bases (nan for one group).
    jackknife: the distribution-level estimate with each group of examples left out in
      turn (spread's EXAMPLE_GROUPS; empty: not measured, as for a pooled spread).
    """

    observed: float
    noise: float
    examples: int
    runs: int
    bases: int = 1
    base_se: float = float("nan")
    jackknife: tuple[float, ...] = ()

    @property
    def interaction(self) -> float:
        """What the runs' independent per-example errors alone put into the jackknife's
        variance, which the runs' pivot already counts: (2 noise^2 + 4 noise x
        distribution) / (runs - 1)."""
        return (2 * self.noise**2 + 4 * self.noise * max(self.distribution, 0.0)) / (self.runs - 1)

    @property
    def examples_var(self) -> float:
        """The variance of the distribution-level estimate over draws of the set's examples:
        the delete-a-group jackknife's ((G - 1) / G x the sum of squared deviations) less
        the interaction, at least 0."""
        g = len(self.jackknife)
        if g < 2:
            return 0.0
        replicates = np.asarray(self.jackknife)
        jackknife = (g - 1) / g * np.sum((replicates - replicates.mean()) ** 2)
        return float(max(0.0, jackknife - self.interaction))

    @property
    def distribution(self) -> float:
        """Unbiased distribution-level variance: (observed - noise) / (1 - 1/examples)."""
        return (self.observed - self.noise) / (1 - 1 / self.examples)

    def value(self, level: str) -> float:
        """The variance at `level`: 'set' (observed on this set) or 'distribution'."""
        return self.observed if level == "set" else self.distribution

    def draws(self, level: str, rng: np.random.Generator, size: int = _DRAWS) -> np.ndarray:
        """Generalised pivotal draws of the true variance at `level`."""
        if self.bases == 1:  # (runs - 1) observed / true ~ chi2(runs - 1)
            df = self.runs - 1
            observed = self.observed * df / rng.chisquare(df, size)
        else:  # log(mean over bases) ~ Student t(bases - 1) around the truth
            scale = self.base_se / self.observed if self.observed > 0 else 0.0
            observed = self.observed * np.exp(-scale * rng.standard_t(self.bases - 1, size))
        if level == "set":
            return observed
        examples = rng.normal(0.0, np.sqrt(self.examples_var), size)
        return (observed - self.noise) / (1 - 1 / self.examples) + examples


def spread(correct) -> Spread:
    """The Spread of one group of independent runs from their per-example correctness
    (runs, examples) of 0/1 or bool, at least 2 runs."""
    c = _as_correctness(correct)
    runs, examples = c.shape
    right = c.sum(axis=0, dtype=np.int64).astype(np.float64)  # per example
    # k(N - k) / (N (N - 1)) is the unbiased estimate of p(1 - p) from k right of N runs.
    uncertainty = right * (runs - right) / (runs * (runs - 1))
    # g runs of consecutive examples, the first examples % g of them one longer
    g = min(EXAMPLE_GROUPS, examples)
    lengths = np.full(g, examples // g)
    lengths[: examples % g] += 1
    ends = np.cumsum(lengths)
    groups = [slice(end - length, end) for end, length in zip(ends, lengths, strict=True)]
    by_group = np.stack([c[:, k].sum(axis=1, dtype=np.int64) for k in groups])  # G x runs
    uncertain = np.array([uncertainty[k].sum() for k in groups])

    # Row 0: every group; row 1 + g: group g left out (the jackknife). The counts are
    # integers (exact in any order); each row's float sums run along its own contiguous axis,
    # so every row adds in the order that the row alone would.
    n = np.concatenate([[examples], examples - lengths]).astype(np.float64)  # examples kept
    totals = by_group.sum(axis=0)
    observed = np.var(np.vstack([totals, totals - by_group]) / n[:, None], axis=1, ddof=1)
    left_out = np.broadcast_to(uncertain, (g, g))[~np.eye(g, dtype=bool)].reshape(g, g - 1)
    noise = np.array([uncertain.sum(), *left_out.sum(axis=1)]) / n**2
    distribution = (observed - noise) / (1 - 1 / n)
    jackknife = tuple(distribution[1:].tolist())
    return Spread(float(observed[0]), float(noise[0]), examples, runs, jackknife=jackknife)


def pooled(spreads) -> Spread:
    """The mean Spread over base trajectories (one Spread per base, each from that base's
    twins), with the standard error of its observed variance across bases (>= 2 bases, all
    on the same evaluation set). It has no examples term: with 2-3 twins a base the
    jackknife's part from the twins' own per-example errors is far from its normal-theory
    `interaction` (simulated with no example effect at all, 12 bases x 2 twins, the term
    came out at 1.2 x the variance it should add nothing to)."""
    spreads = list(spreads)
    if len(spreads) < 2 or any(s.bases != 1 for s in spreads):
        raise ValueError(f"pooled needs >= 2 single-base spreads, got {len(spreads)}")
    if len({s.examples for s in spreads}) != 1:
        raise ValueError("pooled spreads must come from one evaluation set")
    observed = np.array([s.observed for s in spreads])
    return Spread(
        float(observed.mean()),
        float(np.mean([s.noise for s in spreads])),
        spreads[0].examples,
        sum(s.runs for s in spreads),
        len(spreads),
        float(observed.std(ddof=1) / np.sqrt(len(spreads))),
    )


def spread_std(
    s: Spread, level: str, *, confidence: float = 0.95, seed: int = 0, draws: int = _DRAWS
) -> Estimate:
    """The std at `level` ('set' or 'distribution') with its interval (0 where the unbiased
    variance is negative: the set's part alone explains the spread); `draws` pivots."""
    _check_level(level, confidence)
    draws = s.draws(level, np.random.default_rng(seed), draws)
    low, high = _quantiles(np.sqrt(np.clip(draws, 0, None)), confidence)
    return Estimate(
        float(np.sqrt(max(s.value(level), 0.0))), low, high, confidence, _method(s), (s.runs,)
    )


def spread_ratio(
    numerator: Spread,
    denominator: Spread,
    level: str,
    *,
    confidence: float = 0.95,
    seed: int = 0,
    draws: int = _DRAWS,
) -> Estimate:
    """std(numerator) / std(denominator) at `level`, e.g. rounding over seed, with the
    interval of the ratio of the true stds (the two groups' pivots drawn independently). A
    draw in which both stds are 0 leaves the ratio undetermined: it counts as 0 for the lower
    bound and as inf for the upper one."""
    _check_level(level, confidence)
    rng = np.random.default_rng(seed)
    num, den = numerator.draws(level, rng, draws), denominator.draws(level, rng, draws)
    ratios = _ratio(np.sqrt(np.clip(num, 0, None)), np.sqrt(np.clip(den, 0, None)))
    low = _quantiles(np.nan_to_num(ratios, nan=0.0, posinf=np.inf), confidence)[0]
    high = _quantiles(np.nan_to_num(ratios, nan=np.inf, posinf=np.inf), confidence)[1]
    value = _ratio(
        np.sqrt(max(numerator.value(level), 0.0)), np.sqrt(max(denominator.value(level), 0.0))
    )
    method = ", ".join(sorted({_method(numerator), _method(denominator)}))
    return Estimate(float(value), low, high, confidence, method, (numerator.runs, denominator.runs))


def std_interval(values, *, confidence: float = 0.95) -> Estimate:
    """Population std of `values` with the chi-square interval for the true std sigma:
    n * s^2 / sigma^2 ~ chi2(n - 1) for the ddof=0 variance s^2 of n normal draws."""
    x = _as_sample(values, "values")
    _check_confidence(confidence)
    value, n = float(np.std(x)), len(x)
    upper_q, lower_q = scipy.stats.chi2.ppf([(1 + confidence) / 2, (1 - confidence) / 2], n - 1)
    low, high = np.sqrt(n * value**2 / upper_q), np.sqrt(n * value**2 / lower_q)
    return Estimate(value, float(low), float(high), confidence, "normal", (n,))


def std_ratio_interval(numerator, denominator, *, confidence: float = 0.95) -> Estimate:
    """std(numerator) / std(denominator) (population stds) with the F interval for the ratio
    of the true stds: (s1^2 / sigma1^2) / (s2^2 / sigma2^2) ~ F(n1 - 1, n2 - 1) for the
    ddof=1 variances. A zero denominator gives inf (nan if the numerator is zero too)."""
    a, b = _as_sample(numerator, "numerator"), _as_sample(denominator, "denominator")
    _check_confidence(confidence)
    value = _ratio(np.std(a), np.std(b))
    unbiased = _ratio(np.std(a, ddof=1), np.std(b, ddof=1))
    upper_q, lower_q = scipy.stats.f.ppf(
        [(1 + confidence) / 2, (1 - confidence) / 2], len(a) - 1, len(b) - 1
    )
    low, high = unbiased / np.sqrt(upper_q), unbiased / np.sqrt(lower_q)
    return Estimate(float(value), float(low), float(high), confidence, "normal", (len(a), len(b)))


def mean_interval(values, *, confidence: float = 0.95) -> Estimate:
    """Mean of `values` (e.g. churn of each member against the reference) with a Student t
    interval. Pairs that share a reference member are not independent: read it as rough."""
    x = _as_sample(values, "values")
    _check_confidence(confidence)
    value = float(np.mean(x))
    half = scipy.stats.t.ppf((1 + confidence) / 2, len(x) - 1) * np.std(x, ddof=1)
    low, high = value - half / np.sqrt(len(x)), value + half / np.sqrt(len(x))
    return Estimate(value, float(low), float(high), confidence, "normal", (len(x),))


def independent_errors_std(correct) -> float:
    """The accuracy std that the finite evaluation set alone gives (Jordan 2023): the square
    root of a Spread's unbiased `noise` part, from correctness (runs, examples)."""
    return float(np.sqrt(spread(correct).noise))


def ratio_width(
    rounding: Spread, seed: Spread, bases: int, twins: int, seeds: int, level: str
) -> float:
    """The factor high / low that the 95% interval of the rounding/seed std ratio at `level`
    would span with `bases` x `twins` rounding members and `seeds` seed members, if the
    variance components were the measured ones (first-order: the log-variance of each part
    scales as 1/members; the variation between bases is kept)."""
    num_var = _log_variance_per_group(rounding, level, bases, twins)
    den_var = _log_variance_per_group(seed, level, 1, seeds)
    log_width = 2 * 1.96 * 0.5 * np.sqrt(num_var + den_var)
    return float(np.exp(log_width)) if log_width < 700 else np.inf  # exp(710) overflows


def _log_variance_per_group(s: Spread, level: str, bases: int, runs: int) -> float:
    """Var(log of the estimated variance at `level`) for a design of `bases` x `runs`."""
    signal = s.value(level)
    if signal <= 0:
        return np.inf
    within = 2 * s.observed**2 / (runs - 1)  # var of one base's observed variance
    if s.bases > 1:  # measured variation between bases, less its within-base part
        per_base = s.base_se**2 * s.bases
        between = max(0.0, per_base - 2 * s.observed**2 / (s.runs / s.bases - 1))
        return (between + within) / bases / signal**2
    return within / signal**2


def in_words(estimate: Estimate, margin: tuple[float, float] = EQUIVALENCE_MARGIN) -> str:
    """A rounding/seed ratio's interval read as two one-sided tests against the equivalence
    margin: 'not more than a new seed' when it ends below the margin's top ('less than a
    new seed' when it ends below its bottom too), 'not less' when it starts above its
    bottom ('more than' when above its top too), 'as much as a new seed' when it lies inside
    the margin, else 'undecided'. Where it stands against 1 follows in parentheses."""
    low, high = margin
    if not np.isfinite(estimate.value):
        return "undecided: not estimable (the set's own part explains both spreads)"
    if estimate.high < 1:
        where = "the whole interval is below 1"
    elif estimate.low > 1:
        where = "the whole interval is above 1"
    else:
        where = "the interval contains 1"
    not_more, not_less = estimate.high < high, estimate.low > low
    if not_more and not_less:
        return f"as much as a new seed (within the equivalence margin [{low}, {high}]; {where})"
    if estimate.high < low:
        return f"less than a new seed (the whole interval is below the margin's {low}; {where})"
    if estimate.low > high:
        return f"more than a new seed (the whole interval is above the margin's {high}; {where})"
    if not_more:
        return f"not more than a new seed (the interval ends below {high}; {where})"
    if not_less:
        return f"not less than a new seed (the interval starts above {low}; {where})"
    return f"undecided at this size (the interval reaches past {low} and {high}; {where})"


def format_interval(estimate: Estimate, form: str = ".2f") -> str:
    """'value [low, high]', each number in the format `form` (e.g. '.2f', '.2g')."""
    return f"{estimate.value:{form}} [{estimate.low:{form}}, {estimate.high:{form}}]"


def format_estimate(label: str, estimate: Estimate, form: str = ".2f") -> str:
    """One line, e.g. 'rounding/seed accuracy-std ratio 0.71 [0.45, 1.10] (95% CI, normal,
    6+6 members)'."""
    members = "+".join(str(n) for n in estimate.sizes)
    return (
        f"{label} {format_interval(estimate, form)} "
        f"({estimate.confidence:.0%} CI, {estimate.method}, {members} members)"
    )


def _method(s: Spread) -> str:
    return f"nested over {s.bases} bases" if s.bases > 1 else "pivotal"


def _as_sample(values, name: str, minimum: int = 2) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < minimum:
        raise ValueError(f"{name} has shape {x.shape}; expected 1-d with >= {minimum} values")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite values: {x[~np.isfinite(x)][:3].tolist()}")
    return x


def _as_correctness(correct) -> np.ndarray:
    c = np.asarray(correct)
    if c.ndim != 2 or c.shape[0] < 2 or c.shape[1] < 2:
        raise ValueError(f"correct has shape {c.shape}; expected (runs >= 2, examples >= 2)")
    if c.dtype != bool and not ((c == 0) | (c == 1)).all():
        raise ValueError("correct holds values other than 0/1 (or False/True)")
    return c.astype(bool)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} not in (0, 1)")


def _check_level(level: str, confidence: float) -> None:
    _check_confidence(confidence)
    if level not in LEVELS:
        raise ValueError(f"level={level!r}; allowed: {', '.join(LEVELS)}")


def _ratio(numerator, denominator):
    """Elementwise numerator / denominator (stds, >= 0) with x / 0 = inf for x > 0, 0 / 0 = nan."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(numerator, denominator)


def _quantiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """Equal-tailed bounds as order statistics (no interpolation, so inf draws stay inf)."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)
