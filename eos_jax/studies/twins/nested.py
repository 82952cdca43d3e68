"""The headline for roundings in general: nested rounding ensembles against seed members.

A rounding's spread is a property of the trajectory it perturbs: twins of one base seed
spread as far as that base lets them, and another base (or another machine's bits) gives
another spread. So the plan has, for each base seed of twins.bases, an ensemble of
twins.members rounding twins of that base (each rounding source of twins.compare but the
last), and B x R members of the last, stochastic source (seeds SEED_OFFSET + 0, 1, ...) in
ensembles of R, so that one compiled program serves every ensemble.

The table reads every member's correctness at the last step, on the test set and, where the
dataset has one, on the held-out set, and gives per group: the spread as observed on the
set, the set's own part (Jordan 2023: mean_x p(x)(1 - p(x)) / n), and the unbiased
distribution-level spread; the rounding spread pooled over bases with an interval over
bases (statistics.pooled); the rounding/stochastic ratio at each level, in words against
1 and the equivalence margin; a check that the distribution-level spread estimated from the
test set agrees with the held-out one; and the design that would resolve the ratio to a
factor of 1.5 (statistics.ratio_width).
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np

from eos_jax import numerics, results
from eos_jax.analysis import plots, statistics
from eos_jax.studies import rows
from eos_jax.studies.twins.common import TwinsRun, check_list
from eos_jax.training import observers, sources

SEED_OFFSET = 1000  # the stochastic members' seeds: never a base's
TARGET_WIDTH = 1.5  # the ratio interval's high / low that counts as resolved
SPLITS = {"test": "the test set", "heldout": "the distribution"}
# Designs the power table tries: bases x twins, with as many stochastic members.
DESIGN_BASES = (4, 6, 8, 12, 16, 24, 32, 48, 64)
DESIGN_TWINS = (2, 3, 4, 6, 8, 12)


@dataclasses.dataclass(frozen=True)
class GroupRow:
    """One group's spread on one split: a rounding source pooled over its bases, or the
    stochastic members; the ratios are to the stochastic group (None for that group)."""

    source: str
    kind: str
    split: str
    bases: int
    members: int
    accuracy: float
    observed_std: statistics.Estimate
    set_part_std: float
    distribution_std: statistics.Estimate
    ratio_observed: statistics.Estimate | None
    ratio_distribution: statistics.Estimate | None

    def shown(self) -> dict:
        """The row for reading: estimates as 'value [low, high]'."""
        row = {"source": self.source, "split": self.split, "members": self.members}
        row["bases"] = self.bases
        row["accuracy"] = f"{self.accuracy:.4f}"
        row["std on the set"] = statistics.format_interval(self.observed_std, ".2g")
        row["set's part"] = f"{self.set_part_std:.2g}"
        row["distribution std"] = statistics.format_interval(self.distribution_std, ".2g")
        for key, ratio in (
            ("ratio (set)", self.ratio_observed),
            ("ratio (distribution)", self.ratio_distribution),
        ):
            row[key] = "" if ratio is None else statistics.format_interval(ratio)
        return row


@dataclasses.dataclass(frozen=True)
class PowerRow:
    """The ratio interval's width (high / low) that a design would give, from the measured
    variance components of one rounding source against the stochastic one."""

    source: str
    split: str
    level: str
    bases: int
    twins: int
    members: int  # rounding and stochastic together
    width: float


@dataclasses.dataclass(frozen=True)
class BaseRow:
    """One base's rounding twins on one split: their spread as observed and at the
    distribution level."""

    source: str
    base: int
    split: str
    members: int
    observed_std: float
    distribution_std: float


def plan(config) -> list[TwinsRun]:
    """Per rounding source and base seed, twins.members twins; then the stochastic members
    in ensembles of twins.members."""
    t = config.twins
    check_list("bases", t.bases, 0)
    if len(t.bases) < 2:
        raise ValueError(
            f"twins.bases={tuple(t.bases)} names one base; a nested study needs 2 or more "
            "(the rounding spread is pooled over bases and its interval rests on their spread)"
        )
    rounding, stochastic = _check_sources(t.compare)
    runs = []
    for name, base in itertools.product(rounding, t.bases):
        r = _with_seed(config, base)
        members = sources.make_members(r, name, (), t.members, t.tensor, t.index)
        runs.append(TwinsRun(f"base_{base}_{name}", r, members))
    for i in range(len(t.bases)):
        values = tuple(SEED_OFFSET + i * t.members + j for j in range(t.members))
        r = _with_seed(config, values[0])
        members = sources.make_members(r, stochastic, values, t.members, t.tensor, t.index)
        runs.append(TwinsRun(f"{stochastic}_{i}", r, members))
    return runs


def _check_sources(compare) -> tuple[tuple[str, ...], str]:
    """(rounding sources, stochastic source) of twins.compare, or a ValueError."""
    compare = tuple(compare)
    kinds = [sources.get(name).kind for name in compare]  # unknown names: ValueError
    if len(compare) < 2 or kinds[-1] != "stochastic" or set(kinds[:-1]) != {"rounding"}:
        raise ValueError(
            f"twins.compare={compare} must name one or more rounding sources, then one "
            "stochastic source"
        )
    return compare[:-1], compare[-1]


def _with_seed(config, seed: int):
    r = config.copy_and_resolve_references()
    r.seeds.init = r.seeds.data = r.seeds.aug = int(seed)
    return r


def tabulate(config, runs, summaries, workdir) -> dict:
    """nested.md/csv (groups), nested_bases.md/csv, power.md/csv, nested.png; the verdict."""
    rounding, stochastic = _check_sources(config.twins.compare)
    heldout = (config.get("dataset_kwargs") or {}).get("heldout_size")
    splits = ["test", "heldout"] if heldout else ["test"]
    correct = {
        r.name: {s: observers.read_correctness(os.path.join(workdir, r.name), s) for s in splits}
        for r in runs
    }
    groups, base_rows, pooled = _spreads(config.twins.bases, rounding, stochastic, correct)
    table = rows.write(workdir, "nested", groups, [g.shown() for g in groups])
    rows.write(workdir, "nested_bases", base_rows)
    power = _power_rows(pooled)
    rows.write(workdir, "power", power)
    plots.nested(groups, base_rows, os.path.join(workdir, "nested.png"))
    lines = []
    for row in groups:
        if row.ratio_distribution is not None:
            lines += _verdict_lines(row, stochastic, pooled[row.source, row.split])
    lines += _agreement_lines(groups)
    lines += [_headline(g, stochastic, splits) for g in groups if g.source == rounding[0]][-1:]
    seconds = sum(s.seconds_this_session or 0.0 for s in summaries.values())
    lines.append(
        f"wall time of the training: {seconds / 60:.1f} min "
        "(summed over ensembles, each from its last start)"
    )
    fingerprint = results.read_json(os.path.join(workdir, "fingerprint.json"))
    lines.append(f"machine: {numerics.machine_line(fingerprint)}")
    groups, power = ([rows.columns(r) for r in typed] for typed in (groups, power))
    return {"table": table, "verdict": "\n".join(lines), "groups": groups, "power": power}


def _spreads(bases, rounding, stochastic, correct):
    """Per split (correct[run][split]: correctness): the stochastic group and each rounding
    source pooled over its bases (GroupRow), each base's spread (BaseRow), and the pooled
    Spreads with the stochastic one by (source, split), for the power table."""
    groups, base_rows, pooled = [], [], {}
    seed_names = [f"{stochastic}_{i}" for i in range(len(bases))]
    for split in next(iter(correct.values())):
        seeds = statistics.spread(np.concatenate([correct[n][split] for n in seed_names]))
        groups.append(_group_row(stochastic, split, seeds, None, correct, seed_names))
        for name in rounding:
            names = [f"base_{b}_{name}" for b in bases]
            per_base = [statistics.spread(correct[n][split]) for n in names]
            pooled[name, split] = statistics.pooled(per_base), seeds
            groups.append(_group_row(name, split, pooled[name, split][0], seeds, correct, names))
            base_rows += [
                BaseRow(
                    name,
                    int(b),
                    split,
                    s.runs,
                    float(np.sqrt(s.observed)),
                    float(np.sqrt(max(s.distribution, 0.0))),
                )
                for b, s in zip(bases, per_base, strict=True)
            ]
    return groups, base_rows, pooled


def _group_row(source, split, spread, seeds, correct, names) -> GroupRow:
    accuracy = float(np.mean([correct[n][split].mean() for n in names]))
    ratios = [None, None]
    if seeds is not None:
        ratios = [statistics.spread_ratio(spread, seeds, level) for level in statistics.LEVELS]
    return GroupRow(
        source,
        sources.get(source).kind,
        split,
        spread.bases,
        spread.runs,
        accuracy,
        statistics.spread_std(spread, "set"),
        float(np.sqrt(spread.noise)),
        statistics.spread_std(spread, "distribution"),
        *ratios,
    )


def _verdict_lines(row: GroupRow, stochastic: str, spreads) -> list[str]:
    """The two ratio lines of a rounding group on one split, in words, and the design that
    would resolve the distribution-level one."""
    where = f"{SPLITS[row.split]} ({spreads[0].examples:,} signals)"
    lines = []
    for level, ratio in (("set", row.ratio_observed), ("distribution", row.ratio_distribution)):
        if row.split == "heldout" and level == "set":
            continue  # with 100,000 signals the set's part is small: one line says it
        label = f"{row.source}/{stochastic} std ratio, {level} level, on {where}:"
        lines.append(statistics.format_estimate(label, ratio))
        lines.append(f"  -> one rounding against a new seed: {statistics.in_words(ratio)}")
    ratio = row.ratio_distribution
    width = ratio.high / ratio.low if ratio.low > 0 else np.inf
    design = _smallest_design(*spreads, "distribution")
    needed = (
        f"about {design[0]} bases x {design[1]} twins + {design[0] * design[1]} seeds"
        if design
        else f"more than {DESIGN_BASES[-1]} bases x {DESIGN_TWINS[-1]} twins"
    )
    lines.append(
        f"  the distribution-level interval spans a factor {width:.2f} at {row.members}+"
        f"{row.members} members; a factor {TARGET_WIDTH} would take {needed}"
    )
    return lines


def _headline(row: GroupRow, stochastic: str, splits) -> str:
    """The study's verdict: the distribution-level ratio from the largest set measured (the
    held-out set where there is one), in words."""
    where = SPLITS[row.split] if "heldout" in splits else "the distribution (from the test set)"
    words = statistics.in_words(row.ratio_distribution)
    return f"VERDICT (one {row.source} rounding against a new {stochastic}, on {where}): {words}"


def _agreement_lines(groups: list[GroupRow]) -> list[str]:
    """The built-in check: the distribution-level std from the test set (unbiased, noisier)
    must contain the held-out set's estimate in its interval."""
    by_key = {(g.source, g.split): g for g in groups}
    lines = []
    for (source, split), test in by_key.items():
        held = by_key.get((source, "heldout"))
        if split != "test" or held is None:
            continue
        inside = (
            test.distribution_std.low <= held.distribution_std.value <= test.distribution_std.high
        )
        lines.append(
            f"check ({source}): distribution-level std from the test set "
            f"{statistics.format_interval(test.distribution_std, '.2g')}, from the held-out set "
            f"{held.distribution_std.value:.2g}: "
            + ("consistent" if inside else "INCONSISTENT (outside the test set's interval)")
        )
    return lines


def _power_rows(pooled: dict) -> list[PowerRow]:
    """Per rounding source, split and level: the ratio interval's width for each design of
    DESIGN_BASES x DESIGN_TWINS (as many stochastic members), from the measured components."""
    power = []
    for (name, split), (rounding, seeds) in pooled.items():
        for level, bases, twins in itertools.product(statistics.LEVELS, DESIGN_BASES, DESIGN_TWINS):
            width = statistics.ratio_width(rounding, seeds, bases, twins, bases * twins, level)
            power.append(PowerRow(name, split, level, bases, twins, 2 * bases * twins, width))
    return power


def _smallest_design(rounding, seeds, level: str) -> tuple[int, int] | None:
    """The (bases, twins) with the fewest members whose ratio interval spans at most
    TARGET_WIDTH (None if no design of the grid does)."""
    fits = [
        (b * t, b, t)
        for b, t in itertools.product(DESIGN_BASES, DESIGN_TWINS)
        if statistics.ratio_width(rounding, seeds, b, t, b * t, level) <= TARGET_WIDTH
    ]
    return min(fits)[1:] if fits else None
