"""What the twins experiments share: the planned ensemble, checks of the settings, one
ensemble's spread statistics, the rounding/seed verdict and the curves along training."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from eos_jax.analysis import divergence, statistics
from eos_jax.studies.runs import PlannedRun
from eos_jax.training import observers, sources, trainer


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


def source_statistics(sub: str, summary: dict) -> dict:
    """One ensemble's spread with 95% intervals (normal theory: statistics.std_interval,
    mean_interval), and the accuracy std that independent per-example errors would give on
    this test set (statistics.independent_errors_std, from the final predictions). Where
    the members were also evaluated on a large held-out set of the same distribution, the
    spread of that accuracy (the distribution-level spread, measured) and the part of the
    final test-accuracy variance it leaves to the finite test set (Jordan 2023's
    decomposition: sqrt(var(last test) - var(held-out)), both at the final weights)."""
    final = [m["final_accuracy"] for m in summary["members"]]
    others = summary["members"][1:]
    predicted, labels = observers.read_predictions(sub)
    row = {"members": len(final), "final acc mean": float(np.mean(final))}
    row.update(_estimate("final acc std", statistics.std_interval, final))
    row.update(_estimate("churn", statistics.mean_interval, [m["churn"] for m in others]))
    row.update(_estimate("softmax L2", statistics.mean_interval, [m["softmax_l2"] for m in others]))
    row["test-set noise std"] = statistics.independent_errors_std(predicted == labels)
    row["weight D"] = summary["mean_params_rel_l1"]
    heldout = [m.get("heldout_accuracy") for m in summary["members"]]
    if None not in heldout:
        row.update(_estimate("heldout acc std", statistics.std_interval, heldout))
        last = [m["last_test_accuracy"] for m in summary["members"]]
        row["last test acc std"] = float(np.std(last))
        row["test-set part std"] = float(np.sqrt(max(0.0, np.var(last) - np.var(heldout))))
    return row


def _estimate(key: str, interval, values) -> dict:
    """{key, key low, key high} from interval(values); with one value, no interval (nan)."""
    if len(values) < 2:
        return {key: float(np.mean(values)), f"{key} low": np.nan, f"{key} high": np.nan}
    estimate = interval(values)
    return {key: estimate.value, f"{key} low": estimate.low, f"{key} high": estimate.high}


# What a verdict compares: (member field, label of its ratio line, where it was measured).
VERDICT_SPLITS = (
    ("final_accuracy", "rounding/seed accuracy-std ratio", "on the test set"),
    ("heldout_accuracy", "held-out (distribution) ratio", "on the distribution (held-out set)"),
)


def split_ratios(rounding: dict, seed: dict) -> dict[str, statistics.Estimate]:
    """{member field: the rounding/seed accuracy-std ratio with its 95% interval} for each
    field of VERDICT_SPLITS that every member of both ensembles (their summaries) has."""
    ratios = {}
    for field, _, _ in VERDICT_SPLITS:
        accuracies = [[m.get(field) for m in s["members"]] for s in (rounding, seed)]
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


def compare_row(workdir: str, summaries: dict, names) -> dict:
    """The two compared ensembles (rounding, stochastic; their folder names): the
    final-accuracy std ratio with its 95% interval, each one's spread, churn and weight D,
    the test-set noise std, and where measured the held-out (distribution) ratio."""
    stats = [source_statistics(os.path.join(workdir, n), summaries[n]) for n in names]
    accuracies = [[m["final_accuracy"] for m in summaries[n]["members"]] for n in names]
    ratios = split_ratios(*(summaries[n] for n in names))
    row = {"members": "+".join(str(s["members"]) for s in stats)}
    for field, key in (("final_accuracy", "ratio"), ("heldout_accuracy", "held-out ratio")):
        if field in ratios:
            ratio = ratios[field]
            row.update({key: ratio.value, f"{key} low": ratio.low, f"{key} high": ratio.high})
    row["final acc mean"] = float(np.mean(accuracies[0] + accuracies[1]))
    for kind, s in zip(("rounding", "stochastic"), stats, strict=True):
        for key in ("final acc std", "heldout acc std", "churn", "weight D"):
            if key in s:
                row[f"{kind} {key}"] = s[key]
    row["test-set noise std"] = stats[1]["test-set noise std"]
    return row


def mean_over_members(series: observers.Series, field: str) -> tuple[list[int], list[float]]:
    """(steps, mean over members 1.. of a field) of an observer's Series."""
    return series.steps.tolist(), np.mean(series[field][1:], 0).tolist()
