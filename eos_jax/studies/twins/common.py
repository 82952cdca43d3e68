"""What the twins experiments share: the planned ensemble, checks of the settings, one
ensemble's spread statistics, the rounding/seed verdict and the curves along training."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from eos_jax.analysis import divergence, statistics
from eos_jax.studies.rows import column
from eos_jax.studies.runs import PlannedRun
from eos_jax.training import observers, sources, trainer
from eos_jax.training.summary import RunSummary


@dataclasses.dataclass(frozen=True)
class TwinsRun(PlannedRun):
    """A planned twins ensemble; a fig2 run trains at lr / n and watches one tensor every n
    steps."""

    n: int | None = None
    watch: tuple | None = None  # (tensor, every_steps, map steps) for WatchTensor


def check_list(name: str, values, minimum: int | None = None) -> None:
    """ValueError unless `values` is a non-empty list without repeats (of ints >= minimum)."""
    values = tuple(values)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"twins.{name} must be a non-empty list without repeats, got {values}")
    if minimum is not None and not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        raise ValueError(f"twins.{name} must hold integers >= {minimum}, got {values}")


def slug(label: str) -> str:
    """A label as a folder name: 'lr x0.5' -> 'lr_x0.5'."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in label)


def check_compare(compare) -> None:
    """ValueError unless `compare` is (a rounding source, a stochastic source)."""
    compare = tuple(compare)
    kinds = tuple(sources.get(name).kind for name in compare)  # unknown names: ValueError
    if kinds != ("rounding", "stochastic"):
        raise ValueError(
            f"twins.compare={compare} must name a rounding source, then a stochastic one"
        )


@dataclasses.dataclass(frozen=True)
class SourceStatistics:
    """One ensemble's spread (95% intervals, normal theory), the test set's own noise and,
    where the members were also evaluated on a held-out set, the held-out spread."""

    members: int
    final_acc_mean: float = column("final acc mean")
    final_acc_std: statistics.Estimate | None = column("final acc std")
    churn: statistics.Estimate | None = column("churn")
    softmax_l2: statistics.Estimate | None = column("softmax L2")
    test_set_noise_std: float | None = column("test-set noise std")
    weight_d: float | None = column("weight D")
    heldout_acc_std: statistics.Estimate | None = column("heldout acc std")
    last_test_acc_std: float | None = column("last test acc std")
    test_set_part_std: float | None = column("test-set part std")


@dataclasses.dataclass(frozen=True)
class SourceRow:
    """A sources-table row: a source's statistics, or (members 0) why it does not apply."""

    source: str
    kind: str
    statistics: SourceStatistics | None = None
    members: int | None = None  # 0 for a source that does not apply
    note: str | None = None


def source_statistics(sub: str, summary: RunSummary) -> SourceStatistics:
    """One ensemble's spread with 95% intervals (normal theory: statistics.std_interval,
    mean_interval), and the accuracy std that independent per-example errors would give on
    this test set (statistics.independent_errors_std, from the final predictions). Where
    the members were also evaluated on a large held-out set of the same distribution, the
    spread of that accuracy (the distribution-level spread, measured) and the part of the
    final test-accuracy variance it leaves to the finite test set (Jordan 2023's
    decomposition: sqrt(var(last test) - var(held-out)), both at the final weights)."""
    final = summary.column("final_accuracy")
    others = summary.members[1:]  # against member 0
    predicted, labels = observers.read_predictions(sub)
    heldout = summary.column("heldout_accuracy")
    held = {}
    if None not in heldout:
        last = summary.column("last_test_accuracy")
        held = dict(
            heldout_acc_std=_estimate(statistics.std_interval, heldout),
            last_test_acc_std=float(np.std(last)),
            test_set_part_std=float(np.sqrt(max(0.0, np.var(last) - np.var(heldout)))),
        )
    return SourceStatistics(
        members=len(final),
        final_acc_mean=float(np.mean(final)),
        final_acc_std=_estimate(statistics.std_interval, final),
        churn=_estimate(statistics.mean_interval, [m.churn for m in others]),
        softmax_l2=_estimate(statistics.mean_interval, [m.softmax_l2 for m in others]),
        test_set_noise_std=statistics.independent_errors_std(predicted == labels),
        weight_d=summary.mean_params_rel_l1,
        **held,
    )


def _estimate(interval, values) -> statistics.Estimate:
    """interval(values); with one value, that value without an interval (nan)."""
    if len(values) < 2:
        return statistics.Estimate(float(np.mean(values)), np.nan, np.nan, 0.95, "none", (1,))
    return interval(values)


# What a verdict compares: (member field, label of its ratio line, where it was measured).
VERDICT_SPLITS = (
    ("final_accuracy", "rounding/seed accuracy-std ratio", "on the test set"),
    ("heldout_accuracy", "held-out (distribution) ratio", "on the distribution (held-out set)"),
)


def split_ratios(rounding: RunSummary, seed: RunSummary) -> dict[str, statistics.Estimate]:
    """{member field: the rounding/seed accuracy-std ratio with its 95% interval} for each
    field of VERDICT_SPLITS that every member of both ensembles (their summaries) has."""
    ratios = {}
    for field, _, _ in VERDICT_SPLITS:
        accuracies = [s.column(field) for s in (rounding, seed)]
        if None not in accuracies[0] + accuracies[1]:
            ratios[field] = statistics.std_ratio_interval(*accuracies)
    return ratios


def verdict(config, summaries: dict, prefix: str = "source_") -> str:
    """The rounding/seed accuracy-std ratio lines for twins.compare, on the test set and,
    where measured, on the held-out set, then what each says in words (empty if an
    ensemble is missing)."""
    rounding, seed = (summaries.get(prefix + name) for name in config.twins.compare)
    if rounding is None or seed is None:
        return ""
    ratios = split_ratios(rounding, seed)
    lines, words = [], []
    for field, label, where in VERDICT_SPLITS:
        if field in ratios:
            ratio = ratios[field]
            lines.append(statistics.format_estimate(label, ratio))
            words.append(f"{where}: one rounding against a new seed: {statistics.in_words(ratio)}")
    return "\n".join(lines + words)


def onset_curves(sub: str) -> dict[str, tuple[list[int], list[float]]]:
    """Along training: the std of test accuracy across members, and the mean over members
    1.. of churn and weight D against member 0."""
    records = trainer.read_metrics(sub)
    evals, distances = observers.Evaluate.read(records), divergence.MemberDistance.read(records)
    return {
        "accuracy std": (evals.steps.tolist(), np.std(evals["test_accuracy"], 0).tolist()),
        "churn": mean_over_members(distances, "churn"),
        "weight D": mean_over_members(distances, "params_rel_l1"),
    }


@dataclasses.dataclass(frozen=True)
class CompareRow:
    """The two compared ensembles (rounding, stochastic): the final-accuracy std ratio and,
    where measured, the held-out (distribution) ratio, with 95% intervals; each one's
    spread, churn and weight D; the test-set noise std."""

    members: str  # 'rounding+stochastic'
    ratio: statistics.Estimate | None = None
    heldout_ratio: statistics.Estimate | None = column("held-out ratio")
    final_acc_mean: float | None = column("final acc mean")
    rounding_final_acc_std: float | None = column("rounding final acc std")
    rounding_heldout_acc_std: float | None = column("rounding heldout acc std")
    rounding_churn: float | None = column("rounding churn")
    rounding_weight_d: float | None = column("rounding weight D")
    stochastic_final_acc_std: float | None = column("stochastic final acc std")
    stochastic_heldout_acc_std: float | None = column("stochastic heldout acc std")
    stochastic_churn: float | None = column("stochastic churn")
    stochastic_weight_d: float | None = column("stochastic weight D")
    test_set_noise_std: float | None = column("test-set noise std")


def compare_row(workdir: str, summaries: dict, names) -> CompareRow:
    """The CompareRow of two ensembles (their folder names: rounding, stochastic)."""
    rounding, stochastic = (
        source_statistics(os.path.join(workdir, n), summaries[n]) for n in names
    )
    accuracies = [summaries[n].column("final_accuracy") for n in names]
    ratios = split_ratios(*(summaries[n] for n in names))
    kinds = {}
    for kind, s in (("rounding", rounding), ("stochastic", stochastic)):
        held = s.heldout_acc_std
        kinds |= {
            f"{kind}_final_acc_std": s.final_acc_std.value,
            f"{kind}_heldout_acc_std": None if held is None else held.value,
            f"{kind}_churn": s.churn.value,
            f"{kind}_weight_d": s.weight_d,
        }
    return CompareRow(
        members=f"{rounding.members}+{stochastic.members}",
        ratio=ratios.get("final_accuracy"),
        heldout_ratio=ratios.get("heldout_accuracy"),
        final_acc_mean=float(np.mean(accuracies[0] + accuracies[1])),
        test_set_noise_std=stochastic.test_set_noise_std,
        **kinds,
    )


def mean_over_members(series: observers.Series, field: str) -> tuple[list[int], list[float]]:
    """(steps, mean over members 1.. of a field) of an observer's Series."""
    return series.steps.tolist(), np.mean(series[field][1:], 0).tolist()
