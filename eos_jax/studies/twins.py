"""Lockstep twin experiments: rounding-induced vs stochastic divergence.

- table1: per seed, one ensemble of perturbations k (paper Table 1): final accuracy, the
  population std across perturbations per seed and across seeds per perturbation.
- fig2: twins k = 1 and 3, plain SGD at lr / n for n steps per snapshot (same PDE time
  lr x steps for every n); the paper's D of one tensor against PDE time (paper Figure 2).
- sources: every registered source of difference alone, same recipe, same member count,
  with confidence intervals, the test-set noise floor and the rounding/seed verdict.
- sweep: the verdict's two sources (twins.compare) at each learning rate of twins.sweep_lrs:
  how the rounding/seed ratio depends on the learning rate and on training time.
- factors: the verdict's two sources for the recipe and for each variant of twins.factors
  (one ingredient changed at a time): which ingredient makes rounding matter.

`execute(config, workdir)` trains each planned ensemble (a `TwinsRun`) in its own
sub-directory of workdir, resuming from its checkpoints and skipping finished ones, then
writes tables and figures; the observers' readers give it their records as arrays.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from eos_jax import distributed, numerics, recipe, results
from eos_jax.analysis import divergence, plots, statistics
from eos_jax.studies.runs import NotApplicable, PlannedRun, train_all
from eos_jax.training import build, observers, sources, trainer
from eos_jax.training.ensemble import Ensemble

EXPERIMENTS = ("table1", "fig2", "sources", "sweep", "factors")


def default_settings(experiment: str) -> ml_collections.ConfigDict:
    """The twins knobs (config.twins) shared by every twins config; recipes add what differs."""
    t = ml_collections.ConfigDict()
    t.experiment = experiment
    # How the members run (ensemble.resolve_strategy): 'bit_identical' (unrolled: member 0
    # IS the standalone run), 'fast' = 'auto' (unrolled on CPU, where it is also fastest;
    # vmap on GPU/TPU: member 0 only within rounding of the standalone run), or a strategy.
    t.strategy = "auto"
    t.members = 6  # per ensemble (dtype always has 3: fp64, fp32, bf16)
    t.tensor = "conv1/kernel"  # the entry that ulp_init / bitflip_init change ...
    t.index = ()  # ... () = its first normal nonzero entry (reported in summary.json)
    # Member-vs-member distances (churn, softmax L2, weights) every so many steps
    # (None: at every evaluation).
    t.divergence_every_steps = ml_collections.config_dict.placeholder(int)
    # table1: one ensemble per seed (init, data and augmentation seeds together), members k.
    t.seeds = (1, 2, 3, 4, 5, 6)
    t.ks = (1, 3, 5, 7, 9, 11)
    # sources: one ensemble per source; member_values: one value per member when a single
    # source is run (() = the source's default values).
    t.sources = sources.names()
    t.member_values = ()
    # The verdict: accuracy-std ratio of a rounding source to a stochastic one (sources and
    # sweep experiments), with a 95% interval (statistics.std_ratio_interval, normal theory).
    t.compare = ("update_k", "seed")
    # sweep: the two compared sources at each of these learning rates.
    t.sweep_lrs = (0.025, 0.05, 0.1)
    # factors: the two compared sources for the recipe and for each 'label: overrides'
    # variant (overrides as 'field=value ...', values Python literals). A variant that
    # diverges is a row of the table, not the end of the study.
    t.factors = ()
    # fig2: twins k = 1, 3 with plain SGD at lr / n for n in lr_divisors, n * snapshots steps,
    # the watched tensor recorded every n steps; its |difference| map at map_snapshots.
    t.lr_divisors = (1, 2, 4, 8)
    t.snapshots = 100
    t.watch = "conv1/kernel"
    t.map_snapshots = (0, 10, 25, 50, 100)
    return t


@dataclasses.dataclass(frozen=True)
class TwinsRun(PlannedRun):
    """A planned twins ensemble; a fig2 run trains at lr / n and watches one tensor every n
    steps."""

    n: int | None = None
    watch: tuple | None = None  # (tensor, every_steps, map steps) for WatchTensor


def _check_list(name: str, values, minimum: int | None = None) -> None:
    """ValueError unless `values` is a non-empty list without repeats (of ints >= minimum)."""
    values = tuple(values)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"twins.{name} must be a non-empty list without repeats, got {values}")
    if minimum is not None and not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        raise ValueError(f"twins.{name} must hold integers >= {minimum}, got {values}")


def plan(config) -> list[TwinsRun | NotApplicable]:
    """The ensembles an experiment trains. A source that does not apply to the recipe is a
    NotApplicable entry. Every bad setting is a ValueError here (bad tensors / entries: when
    an Ensemble inits)."""
    t = config.twins
    if t.experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {t.experiment!r}; known: {', '.join(EXPERIMENTS)}")
    recipe.validate(config)
    runs = []
    if t.experiment == "table1":
        _check_list("seeds", t.seeds, 0)
        _check_list("ks", t.ks)  # values: sources.make_members checks k >= 1
        for seed in t.seeds:
            r = config.copy_and_resolve_references()
            r.seeds.init = r.seeds.data = r.seeds.aug = int(seed)
            members = sources.make_members(r, "update_k", t.ks)
            runs.append(TwinsRun(f"seed_{seed}", r, members))
    elif t.experiment == "sources":
        _check_list("sources", t.sources)
        _check_compare(t.compare)
        if t.member_values and len(t.sources) > 1:
            raise ValueError(
                f"twins.member_values {tuple(t.member_values)} are for one source; "
                f"got {len(t.sources)} sources"
            )
        for name in t.sources:
            reason = sources.get(name).not_applicable(config)
            if reason:
                runs.append(NotApplicable(f"source_{name}", reason))
                continue
            members = sources.make_members(
                config, name, tuple(t.member_values), t.members, t.tensor, t.index
            )
            runs.append(TwinsRun(f"source_{name}", config, members))
    elif t.experiment == "sweep":
        _check_compare(t.compare)
        _check_list("sweep_lrs", t.sweep_lrs)
        for lr in t.sweep_lrs:
            if not (isinstance(lr, (int, float)) and lr > 0):
                raise ValueError(f"twins.sweep_lrs must hold numbers > 0, got {tuple(t.sweep_lrs)}")
            r = config.copy_and_resolve_references()
            r.optimizer.lr = float(lr)
            for name in t.compare:
                members = sources.make_members(r, name, (), t.members, t.tensor, t.index)
                runs.append(TwinsRun(f"lr_{lr:g}_{name}", r, members))
    elif t.experiment == "factors":
        _check_compare(t.compare)
        for label, _, r in factor_recipes(config):
            for name in t.compare:
                members = sources.make_members(r, name, (), t.members, t.tensor, t.index)
                runs.append(TwinsRun(f"{_slug(label)}_{name}", r, members))
    else:
        _check_list("lr_divisors", t.lr_divisors, 1)
        if not isinstance(t.snapshots, int) or t.snapshots < 1:
            raise ValueError(f"twins.snapshots must be an integer >= 1, got {t.snapshots!r}")
        if not all(isinstance(s, int) and 0 <= s <= t.snapshots for s in t.map_snapshots):
            raise ValueError(
                f"twins.map_snapshots {tuple(t.map_snapshots)} must be integers in "
                f"[0, twins.snapshots = {t.snapshots}]"
            )
        for n in t.lr_divisors:
            r = config.copy_and_resolve_references()
            r.optimizer.update(
                lr=config.optimizer.lr / n, momentum=0.0, nesterov=False, decay_epochs=()
            )
            r.num_steps = r.eval_every_steps = n * t.snapshots
            r.log_every_steps = r.checkpoint_every_steps = max(n * t.snapshots // 10, 1)
            members = sources.make_members(r, "update_k", (1, 3))
            watch = (t.watch, n, tuple(n * s for s in t.map_snapshots))
            runs.append(TwinsRun(f"lr_div_{n}", r, members, n=n, watch=watch))
    return runs


def factor_recipes(config) -> list[tuple[str, str, ml_collections.ConfigDict]]:
    """(label, overrides, recipe) for the recipe itself and each 'label: overrides' entry of
    twins.factors."""
    variants = [("recipe", "", config.copy_and_resolve_references())]
    for entry in config.twins.factors:
        label, sep, text = str(entry).partition(":")
        if not sep or not label.strip():
            raise ValueError(f"twins.factors entry {entry!r} is not 'label: field=value ...'")
        text = text.strip()
        variants.append((label.strip(), text, recipe.with_overrides(config, text, "twins.factors")))
    labels = [label for label, _, _ in variants]
    slugs = [_slug(label) for label in labels]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"twins.factors labels must differ (and not be 'recipe'), got {labels}")
    return variants


def _slug(label: str) -> str:
    """A label as a folder name: 'lr x0.5' -> 'lr_x0.5'."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in label)


def _check_compare(compare) -> None:
    """ValueError unless `compare` is (a rounding source, a stochastic source)."""
    compare = tuple(compare)
    kinds = tuple(sources.get(name).kind for name in compare)  # unknown names: ValueError
    if kinds != ("rounding", "stochastic"):
        raise ValueError(
            f"twins.compare={compare} must name a rounding source, then a stochastic one"
        )


def configure_numerics(config) -> list[TwinsRun | NotApplicable]:
    """The config's numerics, with x64 on when any member of any ensemble computes in fp64.
    Returns the plan, for `execute`."""
    recipe.configure_numerics(config)
    planned = plan(config)
    if any(sources.needs_x64(r.members) for r in planned if isinstance(r, TwinsRun)):
        numerics.enable_x64()
    return planned


def _trainer(config, r: TwinsRun, dataset, workdir: str) -> trainer.Trainer:
    """The Trainer of one planned ensemble, with the member-distance (and watch) observers."""
    ens = Ensemble(r.members, dataset, config.twins.strategy)
    every = config.twins.get("divergence_every_steps") or r.recipe.eval_every_steps
    extra = [divergence.MemberDistance(every)]
    if r.watch is not None:
        extra.append(divergence.WatchTensor(*r.watch))
    return trainer.Trainer(ens, r.recipe, os.path.join(workdir, r.name), extra)


def execute(config, workdir: str, planned: list | None = None) -> dict:
    """Trains every ensemble of the experiment (resuming), writes tables and figures.
    planned: `plan(config)` when already made (configure_numerics returns it)."""
    runs = plan(config) if planned is None else planned
    dataset = build.dataset(config)
    trainers = {
        r.name: _trainer(config, r, dataset, workdir) for r in runs if isinstance(r, TwinsRun)
    }
    keep_going = config.twins.experiment == "factors"
    summaries = train_all(config, workdir, trainers, keep_going)
    if not distributed.is_primary():  # process 0 alone writes the tables
        return {"table": ""}
    tabulate = {
        "table1": _table1,
        "sources": _sources,
        "fig2": _fig2,
        "sweep": _sweep,
        "factors": _factors,
    }[config.twins.experiment]
    summary = tabulate(config, runs, summaries, workdir)
    results.finish(workdir, summary)
    return summary


def table1_rows(accuracy: np.ndarray, seeds, labels) -> tuple[list[dict], dict]:
    """Paper Table 1 from accuracy[seed, perturbation]: one row per seed with its population
    std across perturbations, and (separately) the std across seeds per perturbation."""
    accuracy = np.asarray(accuracy, np.float64)
    rows = [
        {
            "seed": int(s),
            **{lab: float(a) for lab, a in zip(labels, row, strict=True)},
            "std over perturbations": float(np.std(row)),
        }
        for s, row in zip(seeds, accuracy, strict=True)
    ]
    over_seeds = {lab: float(v) for lab, v in zip(labels, np.std(accuracy, 0), strict=True)}
    return rows, over_seeds


def _table1(config, runs, summaries, workdir) -> dict:
    labels = [m["label"] for m in summaries[runs[0].name]["members"]]
    acc = np.array([[m["final_accuracy"] for m in summaries[r.name]["members"]] for r in runs])
    rows, over_seeds = table1_rows(acc, config.twins.seeds, labels)
    results.write_csv(os.path.join(workdir, "table1_std_over_seeds.csv"), [over_seeds])
    shown = [{**r, "seed": str(r["seed"])} for r in rows]
    shown.append({"seed": "std over seeds", **over_seeds, "std over perturbations": ""})
    table = results.write_table(workdir, "table1", rows, shown)
    plots.table1(acc, config.twins.seeds, labels, os.path.join(workdir, "table1.png"))
    return {
        "table": table,
        "accuracy": acc.tolist(),
        "seeds": list(config.twins.seeds),
        "labels": labels,
        "mean_std_over_perturbations": float(np.mean(np.std(acc, 1))),
        "mean_std_over_seeds": float(np.mean(np.std(acc, 0))),
    }


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
            words.append(
                f"{where}: one rounding spreads the accuracy {statistics.against_one(ratio)}"
            )
    return "\n".join(lines + words)


def onset_curves(sub: str) -> dict[str, tuple[list[int], list[float]]]:
    """Along training: the std of test accuracy across members, and the mean over members
    1.. of churn and weight D against member 0."""
    records = trainer.read_metrics(sub)
    evals, distances = observers.Evaluate.read(records), divergence.MemberDistance.read(records)
    return {
        "accuracy std": (evals.steps.tolist(), np.std(evals["test_accuracy"], 0).tolist()),
        "churn": _mean_over_members(distances, "churn"),
        "weight D": _mean_over_members(distances, "params_rel_l1"),
    }


def _sources(config, runs, summaries, workdir) -> dict:
    rows, curves = [], {}
    for r in runs:
        name = r.name.removeprefix("source_")
        kind = sources.get(name).kind
        if isinstance(r, NotApplicable):
            rows.append({"source": name, "kind": kind, "members": 0, "note": r.reason})
            continue
        sub = os.path.join(workdir, r.name)
        rows.append({"source": name, "kind": kind, **source_statistics(sub, summaries[r.name])})
        curves[name] = (kind, onset_curves(sub))
    keys = [k for k in SHOWN_STATISTICS if any(k in row for row in rows)]
    shown = [_with_intervals(row, keys) for row in rows]
    table = results.write_table(workdir, "sources", rows, shown)
    plots.sources(
        [r for r in rows if r["members"]],
        {name: c["weight D"] for name, (_, c) in curves.items()},
        os.path.join(workdir, "sources.png"),
    )
    plots.onset(curves, os.path.join(workdir, "onset.png"))
    line = verdict(config, summaries)
    return {"table": table, "rows": rows, "verdict": line}


# The statistics a sources table shows, in order (the held-out ones where measured).
SHOWN_STATISTICS = ("final acc std", "test-set noise std", "heldout acc std")
SHOWN_STATISTICS += ("test-set part std", "churn", "softmax L2", "weight D")


def _with_intervals(row: dict, keys) -> dict:
    """A sources row for reading: estimates as 'value [low, high]' (95% CI)."""
    shown = {k: row.get(k, "") for k in ("source", "kind", "members", "final acc mean")}
    for key in keys:
        if key not in row:
            shown[key] = ""
        elif f"{key} low" in row:
            shown[key] = f"{row[key]:.2g} [{row[key + ' low']:.2g}, {row[key + ' high']:.2g}]"
        else:
            shown[key] = row[key]
    return {**shown, "note": row.get("note", "")}


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


def _sweep(config, runs, summaries, workdir) -> dict:
    rounding, seed = config.twins.compare
    rows, ratio_curves = [], {}
    for lr in config.twins.sweep_lrs:
        names = [f"lr_{lr:g}_{name}" for name in (rounding, seed)]
        rows.append({"lr": float(lr), **compare_row(workdir, summaries, names)})
        (steps, num), (_, den) = (
            onset_curves(os.path.join(workdir, n))["accuracy std"] for n in names
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_curves[float(lr)] = (steps, list(np.divide(num, den)))
    table = results.write_table(workdir, "sweep", rows)
    plots.sweep(rows, ratio_curves, f"{rounding}/{seed}", os.path.join(workdir, "sweep.png"))
    return {"table": table, "rows": rows}


def _factors(config, runs, summaries, workdir) -> dict:
    """One row per variant: the compare_row, or why it has none (a diverged ensemble)."""
    rows = []
    for label, overrides, _ in factor_recipes(config):
        names = [f"{_slug(label)}_{name}" for name in config.twins.compare]
        diverged = [summaries[n]["what"] for n in names if summaries[n].get("status") == "diverged"]
        row = {"factor": label, "overrides": overrides}
        if diverged:
            rows.append({**row, "note": "diverged: " + diverged[0]})
            continue
        minutes = sum(summaries[n].get("seconds_this_session", np.nan) for n in names) / 60
        rows.append({**row, **compare_row(workdir, summaries, names), "wall minutes": minutes})
    shown = [_ratio_columns(row) for row in rows]
    table = results.write_table(workdir, "factors", rows, shown)
    plots.factors(rows, "/".join(config.twins.compare), os.path.join(workdir, "factors.png"))
    return {"table": table, "rows": rows}


def _ratio_columns(row: dict) -> dict:
    """A factors row for reading: the ratios as 'value [low, high]', accuracies to 4 digits,
    held-out stds to 5, churn and D to 3 significant ones."""
    shown = {"factor": row["factor"], "members": row.get("members", "")}
    for key in ("ratio", "held-out ratio"):
        shown[key] = (
            f"{row[key]:.2f} [{row[key + ' low']:.2f}, {row[key + ' high']:.2f}]"
            if key in row
            else ""
        )
    formats = {"final acc std": "{:.4f}", "heldout acc std": "{:.5f}"}
    formats |= {"churn": "{:.3g}", "weight D": "{:.3g}"}
    shown["final acc mean"] = f"{row['final acc mean']:.4f}" if "final acc mean" in row else ""
    for stat, form in formats.items():
        for kind in ("rounding", "stochastic"):
            key = f"{kind} {stat}"
            shown[key] = form.format(row[key]) if key in row else ""
    shown["wall minutes"] = f"{row['wall minutes']:.1f}" if "wall minutes" in row else ""
    return {**shown, "note": row.get("note", "")}


def _fig2(config, runs, summaries, workdir) -> dict:
    rows, curves = [], {}
    for r in runs:
        lr = r.recipe.optimizer.lr
        watched = divergence.WatchTensor.read(trainer.read_metrics(os.path.join(workdir, r.name)))
        at, distance = watched.member("rel_l1", 1)
        max_ulp = watched.member("max_ulp", 1)[1]
        curves[lr] = ((at * lr).tolist(), distance.tolist())
        rows += [
            {
                "n": r.n,
                "lr": lr,
                "snapshot": int(step) // r.n,
                "pde_time": int(step) * lr,
                "D": float(d),
                "max_ulp": float(u),
            }
            for step, d, u in zip(at, distance, max_ulp, strict=True)
        ]
    results.write_csv(os.path.join(workdir, "fig2.csv"), rows)
    plots.fig2(
        curves,
        {r.recipe.optimizer.lr: r.n for r in runs},
        config.twins.watch,
        os.path.join(workdir, "fig2.png"),
    )
    largest_lr = min(runs, key=lambda r: r.n)
    sub = os.path.join(workdir, largest_lr.name)
    maps = {
        s: np.load(divergence.map_path(sub, s * largest_lr.n))["member1"]
        for s in config.twins.map_snapshots
    }
    if maps:
        plots.tensor_maps(
            maps,
            config.twins.watch,
            largest_lr.recipe.optimizer.lr,
            os.path.join(workdir, "fig2_maps.png"),
        )
    final = [
        {"n": r.n, "lr": r.recipe.optimizer.lr, "final D": curves[r.recipe.optimizer.lr][1][-1]}
        for r in runs
    ]
    return {"table": results.markdown_table(final), "final": final}


def _mean_over_members(series: observers.Series, field: str) -> tuple[list[int], list[float]]:
    """(steps, mean over members 1.. of a field) of an observer's Series."""
    return series.steps.tolist(), np.mean(series[field][1:], 0).tolist()
