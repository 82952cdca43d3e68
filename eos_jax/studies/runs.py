"""What every multi-run study has: typed planned runs, and how its trainers are run."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from eos_jax import distributed, numerics, recipe, results
from eos_jax.training.summary import RunSummary
from eos_jax.training.trainer import TrainingDiverged


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One trainer of a study: its sub-directory `name`, its recipe and its members."""

    name: str
    recipe: Any  # an ml_collections.ConfigDict (eos_jax.recipe)
    members: list  # training.sources.Member, K >= 1


@dataclasses.dataclass(frozen=True)
class NotApplicable:
    """A planned run that cannot differ under the recipe (shown in tables, never trained)."""

    name: str
    reason: str


def train_all(
    config, workdir: str, trainers: dict, keep_going: bool = False, release_programs: bool = False
) -> dict[str, RunSummary]:
    """Runs each planned Trainer (name -> Trainer, each in its own sub-directory).

    First every member state is built (init edits applied) and every observer checked, so
    bad input fails before anything is written; then process 0 prepares the experiment's
    work directory; then each unfinished trainer runs (resuming from its checkpoints) and a
    finished one is read back. Returns the summaries by name. keep_going: a run that
    diverges is a result (RunSummary.diverged, its diverged.json kept), not
    the end of the study (a sweep whose phase diagram has a divergent region).
    release_programs: drop every compiled program after each run (jax.clear_caches), for
    studies whose runs each compile large programs of their own (the response study's
    float64 splits): kept, they piled up until XLA:CPU ran out of memory for code after 10
    ResNet response runs. A later call compiles again, to the same bits; studies whose runs
    share programs leave it off.
    """
    for t in trainers.values():
        t.prepare()
    if distributed.is_primary():
        fingerprint = numerics.fingerprint(recipe.dtype_policy(config), config)
        results.prepare_workdir(workdir, config, fingerprint)
    summaries = {}
    for name, t in trainers.items():
        if results.is_finished(t.workdir):
            summaries[name] = RunSummary.read(t.workdir)
            continue
        try:
            summaries[name] = t.run()
        except TrainingDiverged as error:
            if not keep_going:
                raise
            summaries[name] = RunSummary.diverged(str(error))
        finally:
            if release_programs:
                jax.clear_caches()
    return summaries
