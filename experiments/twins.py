r"""Lockstep twin experiments: rounding-induced vs stochastic divergence.

  python -m experiments.twins --config=experiments/configs/twins_embedded.py:table1 \
      --workdir=/tmp/t1
  python -m experiments.twins --config=experiments/configs/twins_embedded.py:sources \
      --config.twins.sources="('ulp_init',)" --config.twins.member_values="(0, 1, 4)" \
      --workdir=/tmp/ulp

- table1: per seed, one ensemble of perturbations k (paper Table 1): final accuracy, the
  population std across perturbations per seed and across seeds per perturbation.
- fig2: twins k = 1 and 3, plain SGD at lr / n for n steps per snapshot (same PDE time
  lr x steps for every n); the paper's D of one tensor against PDE time (paper Figure 2).
- sources: every named source of difference alone, same recipe, same member count.

Each ensemble trains in its own sub-directory of --workdir and resumes from its checkpoints;
rerunning after a crash continues where it stopped and skips finished ensembles.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from eos_jax import numerics, results
from eos_jax.analysis import divergence, plots
from eos_jax.training import ensemble, loop, sources
from experiments import common

EXPERIMENTS = ("table1", "fig2", "sources")


def _check_list(name: str, values, minimum: int | None = None) -> None:
    """ValueError unless `values` is a non-empty list without repeats (of ints >= minimum)."""
    values = tuple(values)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"twins.{name} must be a non-empty list without repeats, got {values}")
    if minimum is not None and not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        raise ValueError(f"twins.{name} must hold integers >= {minimum}, got {values}")


def plan(config) -> list[dict]:
    """The ensembles an experiment trains: name, recipe, members and watch settings.
    Every bad setting is a ValueError here (bad tensors / entries: when Ensemble.init runs)."""
    t = config.twins
    if t.experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {t.experiment!r}; known: {', '.join(EXPERIMENTS)}")
    runs = []
    if t.experiment == "table1":
        _check_list("seeds", t.seeds, 0)
        _check_list("ks", t.ks)  # values: sources.make_members checks k >= 1
        for seed in t.seeds:
            recipe = config.copy_and_resolve_references()
            recipe.seeds.init = recipe.seeds.data = recipe.seeds.aug = int(seed)
            runs.append(
                dict(
                    name=f"seed_{seed}",
                    recipe=recipe,
                    members=sources.make_members(recipe, "update_k", t.ks),
                )
            )
    elif t.experiment == "sources":
        _check_list("sources", t.sources)
        if t.member_values and len(t.sources) > 1:
            raise ValueError(
                f"twins.member_values {tuple(t.member_values)} are for one source; "
                f"got {len(t.sources)} sources"
            )
        values = tuple(t.member_values)
        for name in t.sources:
            members = sources.make_members(config, name, values, t.members, t.tensor, t.index)
            runs.append(dict(name=f"source_{name}", recipe=config, members=members))
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
            recipe = config.copy_and_resolve_references()
            recipe.optimizer.update(
                lr=config.optimizer.lr / n, momentum=0.0, nesterov=False, decay_epochs=()
            )
            recipe.num_steps = recipe.eval_every_steps = n * t.snapshots
            recipe.log_every_steps = recipe.checkpoint_every_steps = max(n * t.snapshots // 10, 1)
            runs.append(
                dict(
                    name=f"lr_div_{n}",
                    recipe=recipe,
                    n=n,
                    members=sources.make_members(recipe, "update_k", (1, 3)),
                    watch=dict(
                        watch=t.watch,
                        watch_every_steps=n,
                        map_steps=tuple(n * s for s in t.map_snapshots),
                    ),
                )
            )
    return runs


def run(config, workdir: str) -> dict:
    """Trains every ensemble of the experiment (resuming), writes tables and figures."""
    runs = plan(config)
    dataset = loop.load_config_dataset(config)
    ensembles = []
    for r in runs:  # builds and initialises everything first: bad input fails before disk
        ens = ensemble.Ensemble(r["members"], dataset, config.twins.strategy)
        ens.init()  # applies the init edits: bad tensor or entry -> ValueError
        if "watch" in r:
            ens.check_watch(loop.total_steps(r["recipe"], ens.steps_per_epoch), **r["watch"])
        ensembles.append(ens)
    fingerprint = numerics.fingerprint(loop.dtype_policy(config), config)
    results.prepare_workdir(workdir, config, fingerprint)
    summaries = {}
    for r, ens in zip(runs, ensembles, strict=True):
        sub = os.path.join(workdir, r["name"])
        summaries[r["name"]] = (
            results.read_json(os.path.join(sub, results.SUMMARY))
            if results.is_finished(sub)
            else ensemble.train_ensemble(ens, r["recipe"], sub, **r.get("watch", {}))
        )
    tabulate = {"table1": _table1, "sources": _sources, "fig2": _fig2}[config.twins.experiment]
    summary = tabulate(config, runs, summaries, workdir)
    results.finish(workdir, summary)
    return summary


def _write_table(workdir: str, name: str, rows: list[dict]) -> str:
    results.write_csv(os.path.join(workdir, f"{name}.csv"), rows)
    table = results.markdown_table(rows)
    results.atomic_write_text(os.path.join(workdir, f"{name}.md"), table)
    return table


def _table1(config, runs, summaries, workdir) -> dict:
    labels = [m["label"] for m in summaries[runs[0]["name"]]["members"]]
    acc = np.array([[m["final_accuracy"] for m in summaries[r["name"]]["members"]] for r in runs])
    rows = divergence.table1(acc, config.twins.seeds, labels)
    table = _write_table(workdir, "table1", rows)
    plots.table1(acc, config.twins.seeds, labels, os.path.join(workdir, "table1.png"))
    return {
        "table": table,
        "accuracy": acc.tolist(),
        "seeds": list(config.twins.seeds),
        "labels": labels,
        "mean_std_over_perturbations": float(np.mean(np.std(acc, 1))),
        "mean_std_over_seeds": float(np.mean(np.std(acc, 0))),
    }


def _sources(config, runs, summaries, workdir) -> dict:
    rows, curves = [], {}
    for r in runs:
        name, s = r["name"].removeprefix("source_"), summaries[r["name"]]
        rows.append(
            {
                "source": name,
                "kind": (
                    "control"
                    if name == "none"
                    else "rounding"
                    if name in sources.ROUNDING_SOURCES
                    else "stochastic"
                ),
                "members": len(s["members"]),
                "final acc mean": float(np.mean([m["final_accuracy"] for m in s["members"]])),
                "final acc std": s["final_accuracy_std"],
                "churn": s["mean_churn"],
                "softmax L2": s["mean_softmax_l2"],
                "weight D": s["mean_params_rel_l1"],
            }
        )
        curves[name] = _mean_over_members(
            os.path.join(workdir, r["name"]), "eval", lambda rec: rec["params"]["total"]["rel_l1"]
        )
    table = _write_table(workdir, "sources", rows)
    plots.sources(rows, curves, os.path.join(workdir, "sources.png"))
    return {"table": table, "rows": rows}


def _fig2(config, runs, summaries, workdir) -> dict:
    rows, curves = [], {}
    for r in runs:
        lr = r["recipe"].optimizer.lr
        sub = os.path.join(workdir, r["name"])
        watched = [
            rec
            for rec in loop.read_metrics(sub)
            if rec.get("kind") == "watch" and rec["member"] == 1
        ]
        curves[lr] = ([rec["step"] * lr for rec in watched], [rec["rel_l1"] for rec in watched])
        rows += [
            {
                "n": r["n"],
                "lr": lr,
                "snapshot": rec["step"] // r["n"],
                "pde_time": rec["step"] * lr,
                "D": rec["rel_l1"],
                "max_ulp": rec["max_ulp"],
            }
            for rec in watched
        ]
    results.write_csv(os.path.join(workdir, "fig2.csv"), rows)
    plots.fig2(
        curves,
        {r["recipe"].optimizer.lr: r["n"] for r in runs},
        config.twins.watch,
        os.path.join(workdir, "fig2.png"),
    )
    largest_lr = min(runs, key=lambda r: r["n"])
    sub = os.path.join(workdir, largest_lr["name"])
    maps = {
        s: np.load(ensemble.map_path(sub, s * largest_lr["n"]))["member1"]
        for s in config.twins.map_snapshots
    }
    if maps:
        plots.tensor_maps(
            maps,
            config.twins.watch,
            largest_lr["recipe"].optimizer.lr,
            os.path.join(workdir, "fig2_maps.png"),
        )
    final = [
        {"n": r["n"], "lr": lr, "final D": curves[lr][1][-1]}
        for r, lr in ((r, r["recipe"].optimizer.lr) for r in runs)
    ]
    return {"table": results.markdown_table(final), "final": final}


def _mean_over_members(sub: str, kind: str, value) -> tuple[list[int], list[float]]:
    """(steps, mean over members 1.. of value(record)) from a run's metrics.jsonl."""
    by_step: dict[int, list[float]] = {}
    for rec in loop.read_metrics(sub):
        if rec.get("kind") == kind and rec["member"] > 0:
            by_step.setdefault(rec["step"], []).append(value(rec))
    return list(by_step), [float(np.mean(v)) for v in by_step.values()]


def configure(config) -> None:
    """The config's numerics, with x64 on when any member of any ensemble computes in fp64."""
    common.configure_numerics(config)
    if any(sources.needs_x64(r["members"]) for r in plan(config)):
        numerics.enable_x64()


@common.entry_point
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    configure(config)
    summary = run(config, _WORKDIR.value)
    print(summary["table"])
    print(f"results: {_WORKDIR.value}")


if __name__ == "__main__":  # flags only when run as a main: demo.py and tests import run()
    _CONFIG = common.define_config(
        "experiments/configs/twins_embedded.py", "Recipe + twins settings."
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where results go.", required=True)
    common.run(main)
