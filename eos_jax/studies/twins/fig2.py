"""Paper Figure 2: twins k = 1 and 3, plain SGD at lr / n for n steps per snapshot (the
same PDE time lr x steps for every n); the paper's D of one tensor against PDE time, and
where in the tensor the difference sits."""

from __future__ import annotations

import os

import numpy as np

from eos_jax import results
from eos_jax.analysis import divergence, plots
from eos_jax.studies.twins.common import TwinsRun, check_list
from eos_jax.training import sources, trainer


def plan(config) -> list[TwinsRun]:
    """One pair k = 1, 3 for each n of twins.lr_divisors, watching twins.watch every n
    steps."""
    t = config.twins
    check_list("lr_divisors", t.lr_divisors, 1)
    if not isinstance(t.snapshots, int) or t.snapshots < 1:
        raise ValueError(f"twins.snapshots must be an integer >= 1, got {t.snapshots!r}")
    if not all(isinstance(s, int) and 0 <= s <= t.snapshots for s in t.map_snapshots):
        raise ValueError(
            f"twins.map_snapshots {tuple(t.map_snapshots)} must be integers in "
            f"[0, twins.snapshots = {t.snapshots}]"
        )
    runs = []
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


def tabulate(config, runs, summaries, workdir) -> dict:
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
