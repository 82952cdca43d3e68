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
- nested: the headline verdict for roundings in general: R rounding twins of each of B
  base trajectories against B x R seed members, split into the distribution-level spread
  and the finite test set's part, with intervals over bases and the sizes that would
  resolve the ratio.

One module per job: table1.py, fig2.py, compared.py (sources, sweep, factors) and nested.py
each hold an experiment's plan and table, common.py what they share; EXPERIMENTS maps a name
to its (plan, tabulate). `execute(config, workdir)` trains each planned ensemble (a
`TwinsRun`) in its own sub-directory of workdir, resuming from its checkpoints and skipping
finished ones, then writes tables and figures.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import ml_collections

from eos_jax import distributed, numerics, recipe, results
from eos_jax.analysis import divergence
from eos_jax.studies.runs import NotApplicable, train_all
from eos_jax.studies.twins import compared, fig2, nested, table1
from eos_jax.studies.twins.common import TwinsRun
from eos_jax.training import build, sources, trainer
from eos_jax.training.ensemble import Ensemble, resolve_strategy


class Experiment(NamedTuple):
    """An experiment's plan (config -> planned runs) and table (config, runs, summaries,
    workdir -> summary)."""

    plan: object
    tabulate: object


EXPERIMENTS = {
    "table1": Experiment(table1.plan, table1.tabulate),
    "fig2": Experiment(fig2.plan, fig2.tabulate),
    "sources": Experiment(compared.plan_sources, compared.tabulate_sources),
    "sweep": Experiment(compared.plan_sweep, compared.tabulate_sweep),
    "factors": Experiment(compared.plan_factors, compared.tabulate_factors),
    "nested": Experiment(nested.plan, nested.tabulate),
}


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
    # nested: twins.members rounding twins (each source of twins.compare but the last) of
    # each base seed (init, data and augmentation seeds together), against as many members
    # of the last, stochastic source (nested.SEED_OFFSET + 0, 1, ...), in ensembles of
    # twins.members.
    t.bases = (1, 2, 3, 4, 5, 6)
    # sources: one ensemble per source; member_values: one value per member when a single
    # source is run (() = the source's default values).
    t.sources = sources.names()
    t.member_values = ()
    # The verdict: accuracy-std ratio of a rounding source to a stochastic one (sources,
    # sweep and factors: statistics.std_ratio_interval, normal theory; nested: several
    # rounding sources, then the stochastic one).
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


def plan(config) -> list[TwinsRun | NotApplicable]:
    """The ensembles an experiment trains. A source that does not apply to the recipe is a
    NotApplicable entry. Every bad setting is a ValueError here (bad tensors / entries: when
    an Ensemble inits)."""
    _check_settings(config.twins)
    recipe.validate(config)
    return EXPERIMENTS[config.twins.experiment].plan(config)


def _check_settings(t) -> None:
    """The settings every experiment reads, each error naming its field: experiment,
    strategy, members, divergence_every_steps, and the sources named in sources/compare."""
    if t.experiment not in EXPERIMENTS:
        raise ValueError(f"twins.experiment={t.experiment!r}; known: {', '.join(EXPERIMENTS)}")
    try:
        resolve_strategy(t.strategy)
    except ValueError as error:
        raise ValueError(f"twins.strategy={t.strategy!r}: {error}") from None
    if not recipe.is_int(t.members) or t.members < 2:
        raise ValueError(f"twins.members={t.members!r} must be an integer >= 2")
    every = t.get("divergence_every_steps")
    if every is not None and (not recipe.is_int(every) or every < 1):
        raise ValueError(f"twins.divergence_every_steps={every!r} must be None or an integer >= 1")
    for field in ("sources", "compare"):
        unknown = [name for name in t[field] if name not in sources.names()]
        if unknown:
            raise ValueError(
                f"twins.{field}={tuple(t[field])}: unknown source {unknown[0]!r}; "
                f"known: {', '.join(sources.names())}"
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
    summary = EXPERIMENTS[config.twins.experiment].tabulate(config, runs, summaries, workdir)
    results.finish(workdir, summary)
    return summary
