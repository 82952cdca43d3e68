"""Figures of the twin experiments (matplotlib, Agg: files only, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table1(accuracy: np.ndarray, seeds: Sequence[int], labels: Sequence[str], path: str) -> None:
    """Left: final accuracy per perturbation, one line per seed. Right: the two spreads, as
    two groups of bars (per seed: std over perturbations; per perturbation: std over seeds)."""
    accuracy = np.asarray(accuracy)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(1, 1.2))
    for seed, row in zip(seeds, accuracy, strict=True):
        left.plot(labels, row, marker="o", label=f"seed {seed}")
    left.set(
        xlabel="perturbation k",
        ylabel="final test accuracy (mean of last 10 evals)",
        title="one line per seed: wiggle = rounding, spacing = seed",
    )
    left.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    per_seed, per_k = np.std(accuracy, 1), np.std(accuracy, 0)
    x_seed = np.arange(len(seeds))
    x_k = len(seeds) + 1 + np.arange(len(labels))
    right.bar(
        x_seed,
        per_seed,
        color="tab:blue",
        label=f"rounding: std over perturbations, per seed (mean {per_seed.mean():.2g})",
    )
    right.bar(
        x_k,
        per_k,
        color="tab:orange",
        label=f"seed: std over seeds, per perturbation (mean {per_k.mean():.2g})",
    )
    right.set_xticks(
        np.concatenate([x_seed, x_k]),
        [f"seed {s}" for s in seeds] + list(labels),
        rotation=45,
        ha="right",
    )
    right.set(ylabel="population std of final accuracy", title="rounding spread vs seed spread")
    right.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def sources(rows: list, curves: dict[str, tuple], path: str) -> None:
    """Left: accuracy std and churn per source (rows: the sources table's measured rows,
    twins.common.SourceRow). Right: weight distance D over training."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [r.source for r in rows]
    x = np.arange(len(names))
    for offset, field, label in (
        (-0.2, "final_acc_std", "final accuracy std across members"),
        (0.2, "churn", "churn: predictions differing from member 0"),
    ):
        values = np.array([getattr(r.statistics, field).value for r in rows])
        left.bar(x + offset, values, 0.4, label=label)
        for xi in x[values == 0]:  # an exact 0 is a result: say so rather than show nothing
            left.annotate("0", (xi + offset, 0), ha="center", va="bottom", fontsize=7)
    left.set_xticks(x, names, rotation=45, ha="right")
    left.set(ylabel="fraction of the test set", title="spread across members, by source")
    left.legend(fontsize=8)
    silent = []
    for i, (name, (steps, d)) in enumerate(curves.items()):
        if np.any(np.asarray(d) > 0):
            linestyle, marker = _CURVE_STYLES[i % len(_CURVE_STYLES)]
            right.semilogy(
                steps,
                d,
                label=name,
                linestyle=linestyle,
                marker=marker,
                fillstyle="none",  # hollow: a marker on top of another leaves it visible
                markevery=(i % 5, 5),  # staggered, so coinciding curves show both markers
            )
        else:
            silent.append(name)
    right.set(
        xlabel="training step",
        ylabel="weight D to member 0 (mean over members)",
        title="divergence in weight space"
        + (f"\n(D = 0 throughout, not drawn: {', '.join(silent)})" if silent else ""),
    )
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)


# (line style, marker) per curve, in turn: curves that coincide (e.g. seed and init_seed, whose
# members differ the same way) stay distinguishable by their markers.
_CURVE_STYLES = (
    ("-", "o"),
    ("--", "s"),
    (":", "^"),
    ("-.", "v"),
    ("-", "x"),
    ("--", "D"),
    (":", "+"),
    ("-.", "*"),
    ("-", "<"),
    ("--", ">"),
)


def fig2(curves: dict[float, tuple], divisors: dict[float, int], tensor: str, path: str) -> None:
    """The paper's Figure 2: D of one tensor of twins k=1, k=3 against PDE time, one curve
    per learning rate lr0 / n (divisors maps lr -> n)."""
    fig, ax = plt.subplots(figsize=(6.5, 5.0))
    for lr, (time, d) in sorted(curves.items(), reverse=True):
        ax.plot(time, d, marker=".", markersize=3, label=f"lr = {lr:.4g} (n = {divisors[lr]})")
    ax.set(
        xlabel="PDE time = lr x iterations (one snapshot every n iterations)",
        ylabel="D = 2 mean |w1-w2| / (|w1|+|w2|)",
        title=f"twins k=1 vs k=3: {tensor}",
    )
    ax.set_yscale("symlog", linthresh=1e-8)  # linear below 1e-8, so that D = 0 is drawn
    ax.legend(fontsize=8)
    fig.text(0.5, 0.01, _FIG2_CAPTION, ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))  # room for the caption
    fig.savefig(path, dpi=120)
    plt.close(fig)


_FIG2_CAPTION = (
    "Each curve is one lr; all run to the same PDE time. D = 0: the twins are bit-identical.\n"
    "The paper's claim: at large lr gradient descent amplifies the one-ulp difference (D rises),\n"
    "at a small enough lr it does not (D stays near 0)."
)


def tensor_maps(maps: dict[int, np.ndarray], tensor: str, lr: float, path: str) -> None:
    """|w1 - w2| over (output, input) channels at chosen snapshots: where divergence sits.
    One colour scale for all panels; entries where the twins are identical are grey."""
    nonzero = [m[m > 0] for m in maps.values() if np.any(m > 0)]
    low, high = (
        (np.log10(min(v.min() for v in nonzero)), np.log10(max(v.max() for v in nonzero)))
        if nonzero
        else (-12.0, -11.0)
    )
    cmap = plt.get_cmap("magma").with_extremes(bad="lightgrey")
    fig, axes = plt.subplots(
        1, len(maps), figsize=(2.6 * len(maps) + 1.2, 3.6), squeeze=False, layout="constrained"
    )
    for ax, (snapshot, m) in zip(axes[0], sorted(maps.items()), strict=True):
        shown = np.ma.masked_equal(m, 0)
        image = ax.imshow(np.ma.log10(shown), cmap=cmap, vmin=low, vmax=high)
        same = float(np.mean(m == 0))
        ax.set(
            title=f"snapshot {snapshot}\n{same:.0%} identical (grey)",
            xlabel="input channel",
            ylabel="output channel",
        )
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.03, label="log10 |w1 - w2|")
    fig.suptitle(f"{tensor}, lr = {lr:.4g}: |w1 - w2| averaged over the kernel's spatial taps")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def onset(curves: dict[str, tuple[str, dict]], path: str) -> None:
    """When rounding starts to matter: per source (curves maps name -> (kind, onset curves of
    eos_jax.studies.twins.common.onset_curves)), the spread across members along training.
    Rounding sources are solid, stochastic ones dashed."""
    panels = (
        ("accuracy std", "std of test accuracy across members", "linear"),
        ("churn", "churn: test predictions differing from member 0", "linear"),
        ("weight D", "weight D to member 0", "log"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    colours = plt.get_cmap("tab10")
    for i, (name, (kind, c)) in enumerate(curves.items()):
        style = dict(
            color=colours(i % 10),
            linestyle="-" if kind == "rounding" else "--",
            label=f"{name} ({kind})",
        )
        for ax, (key, _, scale) in zip(axes, panels, strict=True):
            steps, values = c[key]
            if scale == "log":  # D = 0 (identical members) cannot be drawn on a log axis
                keep = np.asarray(values) > 0
                steps, values = np.asarray(steps)[keep], np.asarray(values)[keep]
            ax.plot(steps, values, **style)
    for ax, (_, ylabel, scale) in zip(axes, panels, strict=True):
        ax.set(xlabel="training step", ylabel=ylabel, yscale=scale)
    axes[0].set_title("accuracy spread: rounding (solid) vs stochastic (dashed)")
    axes[1].set_title("where the members disagree")
    axes[2].set_title("distance in weight space")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def nested(groups: list, bases: list, path: str) -> None:
    """The nested study (studies.twins.nested): left, the distribution-level std of each
    base's rounding twins (dots), pooled over bases and of the seed members (bars: 95%
    intervals), per split; right, each rounding/seed ratio with its interval against 1 and
    the equivalence margin (a ratio without a finite estimate says so in words)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for x, g in enumerate(groups):
        d = g.distribution_std
        left.errorbar(
            [x],
            [d.value],
            [[d.value - d.low], [d.high - d.value]],
            fmt="o",
            color="C1" if g.kind == "stochastic" else "C0",
            capsize=4,
        )
        per_base = [b.distribution_std for b in bases if (b.source, b.split) == (g.source, g.split)]
        left.plot([x + 0.2] * len(per_base), per_base, ".", color="0.5")
    left.set_xticks(range(len(groups)), [f"{g.source}\n{g.split}" for g in groups])
    left.set_ylabel("distribution-level accuracy std")
    left.set_title("spread (grey: each base's twins)")
    ratios = [
        (g, lvl, r)
        for g in groups
        for lvl, r in (("set", g.ratio_observed), ("distribution", g.ratio_distribution))
        if r is not None
    ]
    for y, (_, _, r) in enumerate(ratios):
        if not np.isfinite([r.value, r.high]).all():  # the set's own part explains a spread
            right.annotate("not estimable", (1, y), ha="center", va="center", fontsize=8)
            continue
        right.errorbar(
            [r.value],
            [y],
            xerr=[[r.value - r.low], [r.high - r.value]],
            fmt="o",
            capsize=4,
            color="C0",
        )
    right.axvline(1, color="k", lw=1)
    right.axvspan(0.8, 1.25, color="0.9", zorder=0, label="equivalence margin")
    right.set_yticks(range(len(ratios)), [f"{g.source} {g.split}\n{lvl}" for g, lvl, _ in ratios])
    right.set_xscale("log")
    right.set_xlabel("rounding / seed std ratio (95% interval)")
    right.legend(loc="best", fontsize=8)
    _save(fig, path)


def sweep(rows: list, ratio_curves: dict[float, tuple], ratio_name: str, path: str) -> None:
    """Left: the final-accuracy std ratio (rounding / stochastic) against the learning rate,
    with its 95% interval (rows: twins.compared.SweepRow); 1 means rounding spreads results
    as much as the seed. Right: the same ratio of the per-evaluation accuracy std along
    training, one line per lr."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    lrs = np.array([r.lr for r in rows])
    ratio = np.array([r.compare.ratio.value for r in rows])
    low, high = (np.array([getattr(r.compare.ratio, e) for r in rows]) for e in ("low", "high"))
    left.errorbar(lrs, ratio, yerr=[ratio - low, high - ratio], marker="o", capsize=4)
    left.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    left.set(
        xscale="log",
        xlabel="learning rate",
        ylabel=f"accuracy-std ratio {ratio_name}",
        title="rounding spread / seed spread of final accuracy (95% CI)",
    )
    for lr, (steps, values) in sorted(ratio_curves.items()):
        right.plot(steps, values, label=f"lr = {lr:g}")
    right.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    right.set(
        xlabel="training step",
        ylabel=f"accuracy-std ratio {ratio_name}",
        title="the same ratio along training",
    )
    right.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def factors(rows: list, ratio_name: str, path: str) -> None:
    """Left: the accuracy-std ratio (rounding / stochastic) per factor with its 95% interval,
    on the test set and, where measured, on the held-out set (the distribution); 1 means
    rounding spreads results as much as the seed. Right: each source's weight distance D.
    rows: twins.compared.FactorRow; a variant that diverged has no marker."""
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 0.45 * len(rows) + 1.8), layout="constrained", sharey=True
    )
    y = np.arange(len(rows))[::-1]
    for offset, field, label in ((0.12, "ratio", "test set"), (-0.12, "heldout_ratio", "held-out")):
        ratios = {i: r.compare and getattr(r.compare, field) for i, r in enumerate(rows)}
        at = [i for i, ratio in ratios.items() if ratio is not None]
        if not at:
            continue
        value, low, high = (
            np.array([getattr(ratios[i], e) for i in at]) for e in ("value", "low", "high")
        )
        left.errorbar(
            value, y[at] + offset, xerr=[value - low, high - value], fmt="o", capsize=3, label=label
        )
    left.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    left.set(
        xscale="log",
        yticks=y,
        yticklabels=[r.factor for r in rows],
        xlabel=f"accuracy-std ratio {ratio_name} (95% CI)",
        title="rounding spread / seed spread, one factor changed at a time",
    )
    left.legend(fontsize=8)
    for offset, kind in ((0.12, "rounding"), (-0.12, "stochastic")):
        at = [i for i, r in enumerate(rows) if r.compare is not None]
        distances = [getattr(rows[i].compare, f"{kind}_weight_d") for i in at]
        right.plot(distances, y[at] + offset, "s", label=kind)
    right.set(xlabel="weight distance D to member 0", title="how far the weights go")
    right.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sharpness_curves(curves: dict[str, dict], path: str) -> None:
    """Left: data-loss sharpness (preconditioned for a curve marked `preconditioned`: Adam)
    against step per run, its predicted threshold dashed in the same colour. Right: the
    training-set loss (log scale)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, c in enumerate(curves.values()):
        color = f"C{i % 10}"
        left.plot(c["steps"], c["sharpness"], color=color, label=c["label"])
        left.axhline(c["predicted"], color=color, linestyle="--", linewidth=0.8)
        right.semilogy(c["steps"], c["loss"], color=color)
    adam = any(c.get("preconditioned") for c in curves.values())
    left.set(
        xlabel="step",
        ylabel="top eigenvalue of P^-1/2 H P^-1/2"
        if adam
        else "top eigenvalue of the data-loss Hessian",
        title="sharpness (dashed: c / lr - wd"
        + ", Adam: (2 + 2 beta1) / ((1 - beta1) lr)" * adam
        + ")",
    )
    left.legend(fontsize=7)
    right.set(xlabel="step", ylabel="training-set loss", title="loss")
    _save(fig, path)


def regions_curves(curves: dict[str, dict], path: str) -> None:
    """Left: sharpness against step per run (prediction dashed). Right: the fraction of each
    layer's pre-activations in the transitioning band |z| <= t (one line style per layer,
    the run's colour)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = ("-", "--", ":", "-.")
    for i, c in enumerate(curves.values()):
        color = f"C{i % 10}"
        left.plot(c["steps"], c["sharpness"], color=color, label=c["label"])
        left.axhline(c["predicted"], color=color, linestyle="--", linewidth=0.8)
        for j, (layer, values) in enumerate(c["transitioning"].items()):
            label = layer if i == 0 else None
            right.plot(c["regions_steps"], values, color=color, ls=styles[j % 4], label=label)
    left.set(xlabel="step", ylabel="top eigenvalue of the data-loss Hessian", title="sharpness")
    left.legend(fontsize=7)
    right.set(
        xlabel="step",
        ylabel="fraction of pre-activations",
        title="transitioning |z| <= t, per layer (run colours as left)",
    )
    right.ticklabel_format(axis="y", useOffset=False)
    right.legend(fontsize=7)
    _save(fig, path)


def predicted_vs_observed(rows: list, path: str) -> None:
    """Observed plateau (median over the last half) against the predicted threshold, with
    the line y = x and the plateau's interquartile range as an error bar (rows:
    studies.eos.EosRow)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    rows = [r for r in rows if r.finished is not None]  # diverged runs have no plateau
    predicted = np.array([r.predicted_threshold for r in rows])
    observed = np.array([r.finished.plateau.observed_plateau for r in rows])
    iqr = np.array([r.finished.plateau.plateau_iqr for r in rows])
    ax.errorbar(predicted, observed, yerr=iqr / 2, fmt="o", capsize=3)
    for r, y in zip(rows, observed, strict=True):
        ax.annotate(r.name, (r.predicted_threshold, y), fontsize=6)
    lo, hi = 0.0, 1.1 * max(predicted.max(), observed.max())
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="observed = predicted")
    ax.set(
        xlabel="predicted threshold c / lr - wd",
        ylabel="observed plateau",
        xlim=(lo, hi),
        ylim=(lo, hi),
        title="Edge of Stability",
    )
    ax.legend(fontsize=7)
    _save(fig, path)


def forecast(predictions: list, path: str) -> None:
    """Per target (panel): each run's final value against its forecast from the observed
    start (the best single feature, leave-one-out), log-log, one colour per activation
    (predictions: studies.response.ForecastRun)."""
    targets = list(dict.fromkeys(p.target for p in predictions))
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4.6), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        rows = [p for p in predictions if p.target == target]
        for i, activation in enumerate(dict.fromkeys(r.activation for r in rows)):
            mine = [r for r in rows if r.activation == activation]
            ax.loglog(
                [r.predicted for r in mine],
                [r.observed for r in mine],
                "o",
                color=f"C{i}",
                label=activation,
            )
        values = [v for r in rows for v in (r.predicted, r.observed)]
        lo, hi = min(values) / 1.5, max(values) * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="observed = predicted")
        ax.set(
            xlabel=f"forecast from: {rows[0].feature}",
            ylabel=f"observed {target}",
            title=f"{target}: forecast from the start",
        )
        ax.legend(fontsize=7)
    _save(fig, path)


PHASE_MARKERS = {
    "edge": ("o", "tab:green"),
    "edge at c/lr - wd": ("o", "tab:green"),
    "edge (unresolved)": ("o", "tab:olive"),
    "edge at c/lr": ("s", "tab:orange"),
    "between c/lr - wd and c/lr": ("D", "tab:brown"),
    "below the edge": ("v", "tab:blue"),
    "above the edge": ("^", "tab:purple"),
    "diverged": ("x", "tab:red"),
}


def eos_phases(rows: list, path: str) -> None:
    """A phase diagram of a weight-decay sweep (rows: studies.eos.EosRow): each run at
    (c/lr, shift of the threshold by the decay as a fraction of c/lr: lr wd / c for SGD,
    lr wd / 2 for AdamW; log scales), marked by where it settled, annotated with the
    centre's (else the iterate's) plateau / prediction and the orbit's period where
    measured (irregular: hollow)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    seen = set()
    for i, r in enumerate(rows):
        c_over_lr = r.threshold_without_decay
        shift = 1 - r.predicted_threshold / c_over_lr
        marker, color = PHASE_MARKERS[r.phase]
        label = None if r.phase in seen else r.phase
        seen.add(r.phase)
        done = r.finished
        hollow = done is not None and done.period == "irregular"
        face = "none" if hollow else color
        ax.scatter(
            c_over_lr, shift, marker=marker, edgecolors=color, facecolors=face, s=45, label=label
        )
        if done is not None:
            midpoint = done.midpoint.midpoint_plateau
            plateau = done.plateau.observed_plateau if midpoint is None else midpoint
            centre = plateau / r.predicted_threshold
            period = "" if done.period is None else f", period {done.period}"
            ax.annotate(
                f"{centre:.3f}{period}",
                (c_over_lr, shift),
                fontsize=6,
                xytext=(4, 3 - 8 * (i % 3)),  # neighbouring runs' labels apart
                textcoords="offset points",
            )
    ax.set(
        xscale="log",
        yscale="log" if all(r.weight_decay > 0 for r in rows) else "linear",
        xlabel="c / lr (the threshold without decay)",
        ylabel="the decay's shift of the threshold, over c / lr",
        title="Weight decay at the edge: where each run settled (centre / prediction)",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    _save(fig, path)


def response_curves(curves: dict[str, dict], path: str) -> None:
    """Twin pairs against their forced linear responses (studies.response): ||Delta|| solid,
    ||delta^r|| (full rounding forcing) dashed, ||delta^f|| (the perturbation alone) dotted,
    log scale; first switches (any layer) as ticks on the Delta curve, the first rounding
    jump as a triangle, the step where the twins leave the linear response as a cross. One
    panel per activation (columns) and source (rows); one colour per run."""
    activations = list(dict.fromkeys(c["activation"] for c in curves.values()))
    sources_ = list(dict.fromkeys(c["source"] for c in curves.values()))
    fig, axes = plt.subplots(
        len(sources_),
        len(activations),
        figsize=(6 * len(activations), 4 * len(sources_)),
        squeeze=False,
    )
    colours: dict[str, str] = {}
    for c in curves.values():
        ax = axes[sources_.index(c["source"]), activations.index(c["activation"])]
        color = colours.setdefault(c["label"], f"C{len(colours) % 10}")
        steps_ = np.asarray(c["steps"])

        def positive(values):
            values = np.asarray(values, dtype=float)
            return np.where(values > 0, values, np.nan)

        delta = positive(c["delta"])
        ax.semilogy(steps_, delta, color=color, label=c["label"])
        ax.semilogy(steps_, positive(c["response_r"]), color=color, ls="--", lw=0.8)
        ax.semilogy(steps_, positive(c["response_f"]), color=color, ls=":", lw=0.8)
        at = np.searchsorted(steps_, c["first_switches"])
        ax.plot(steps_[at], delta[at], "|", color=color, ms=12, mew=1.5)
        for key, marker in (("rounding_jump_at", "^"), ("leaves_at", "x")):
            if c.get(key) is not None:
                i = int(np.searchsorted(steps_, c[key]))
                ax.plot(steps_[i], delta[i], marker, color=color, ms=9, mew=2, mfc="none")
    for i, source in enumerate(sources_):
        for j, activation in enumerate(activations):
            axes[i, j].set(
                xlabel="step",
                ylabel="L2 norm over the state",
                title=f"{activation}, {source}: ||Delta|| (solid), ||delta^r|| (--), "
                "||delta^f|| (:)",
            )
            axes[i, j].title.set_fontsize(8)
            axes[i, j].legend(
                fontsize=7, title="| first switch, ^ rounding jump, x leaves", title_fontsize=7
            )
    _save(fig, path)
