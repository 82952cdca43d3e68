"""Paper Table 1: per seed, one ensemble of perturbations k; the population std across
perturbations per seed and across seeds per perturbation."""

from __future__ import annotations

import os

import numpy as np

from eos_jax import results
from eos_jax.analysis import plots
from eos_jax.studies.twins.common import TwinsRun, check_list
from eos_jax.training import sources


def plan(config) -> list[TwinsRun]:
    """One ensemble of update_k members twins.ks for each seed of twins.seeds (the init,
    data and augmentation seeds together)."""
    t = config.twins
    check_list("seeds", t.seeds, 0)
    check_list("ks", t.ks)  # values: sources.make_members checks k >= 1
    runs = []
    for seed in t.seeds:
        r = config.copy_and_resolve_references()
        r.seeds.init = r.seeds.data = r.seeds.aug = int(seed)
        runs.append(TwinsRun(f"seed_{seed}", r, sources.make_members(r, "update_k", t.ks)))
    return runs


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


def tabulate(config, runs, summaries, workdir) -> dict:
    labels = summaries[runs[0].name].column("label")
    acc = np.array([summaries[r.name].column("final_accuracy") for r in runs])
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
