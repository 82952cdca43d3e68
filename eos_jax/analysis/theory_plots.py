"""Figures of the theory experiments (paper Figures 1, 3, 4 and a phase diagram).

Each function takes plain arrays and writes one PNG. matplotlib's object API (Figure, no
pyplot) keeps this free of global backend state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

DPI = 100
CLASS_STYLE = {  # observed run class -> (marker, colour)
    "converging": ("o", "tab:green"),
    "restrained": ("s", "tab:orange"),
    "neutral": ("D", "tab:blue"),
    "blow-up": ("x", "tab:red"),
}


def _save(fig: Figure, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def heat_profiles(profiles: Mapping[float, np.ndarray], shown_steps: Sequence[int], path: str):
    """Figure 1: u(x) at a few steps of forward Euler per dt, and max|u| against step.

    A run that grew more than tenfold gets a symmetric-log axis (linear within +-1).
    """
    panels = len(profiles) + 1
    fig = Figure(figsize=(3.6 * panels, 3.2))
    for i, (dt, u) in enumerate(profiles.items()):
        ax = fig.add_subplot(1, panels, i + 1)
        for t in shown_steps:
            ax.plot(u[t], label=f"step {t}")
        if np.nanmax(np.abs(u)) > 10 * np.max(np.abs(u[0])):
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"heat equation, dt = {dt}")
        ax.set_xlabel("x")
        ax.set_ylabel("u")
        ax.legend(fontsize=7)
    ax = fig.add_subplot(1, panels, panels)
    for dt, u in profiles.items():
        ax.semilogy(np.max(np.abs(u), axis=1), label=f"dt = {dt}")
    ax.set_xlabel("step")
    ax.set_ylabel("max |u|")
    ax.legend(fontsize=7)
    _save(fig, path)


def linear_pde(
    norms: Mapping[float, np.ndarray],
    observed_rates: Mapping[float, float],
    predicted_rates: Mapping[float, float],
    window: tuple[float, float],
    path: str,
):
    """Figure 3: |K_t| per alpha, and the per-step growth rate against alpha with the window."""
    fig = Figure(figsize=(10, 3.6))
    ax = fig.add_subplot(1, 2, 1)
    for alpha, n in norms.items():
        ax.semilogy(n, label=f"alpha = {alpha:.3g}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("|K|")
    ax.set_title("transitioning-region linear PDE, lr = 1e-8")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    alphas = np.array(list(observed_rates))
    ax.axvspan(*window, color="tab:green", alpha=0.15, label="predicted stable window")
    ax.semilogx(alphas, list(predicted_rates.values()), "k-", label="predicted max|1 - dt lambda|")
    ax.semilogx(alphas, list(observed_rates.values()), "o", color="tab:blue", label="observed")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("alpha")
    ax.set_ylabel("per-step growth of |K_{t+1} - K_t|")
    ax.legend(fontsize=7)
    _save(fig, path)


def loss_curves(losses: Mapping[float, np.ndarray], title: str, path: str, zoom: int = 100):
    """Figure 4 left: loss (with weight decay) against iteration per lr, and the last `zoom`
    iterations of the runs that stayed bounded. Curves leaving the top have blown up.
    One colour per lr in both panels; the legend sits outside, right of the panels."""
    fig = Figure(figsize=(12, 4))
    full, last = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    start = max(0, max(len(c) for c in losses.values()) - zoom)
    top = 3 * max(c[0] for c in losses.values())
    for i, (lr, curve) in enumerate(losses.items()):
        colour = f"C{i % 10}"
        shown = np.where(curve <= 1e3 * top, curve, np.nan)  # a blow-up leaves through the top
        full.semilogy(shown, label=f"lr = {lr:g}", lw=0.8, color=colour)
        if np.all(np.isfinite(curve)) and curve[-1] < curve[0]:
            last.plot(np.arange(start, len(curve)), curve[start:], lw=0.8, color=colour)
    lowest = min(np.nanmin(np.where(np.isfinite(c), c, np.nan)) for c in losses.values())
    full.set_ylim(0.8 * lowest, top)
    full.set_xlabel("iteration")
    full.set_ylabel("loss")
    full.set_title(title)
    last.set_xlabel("iteration")
    last.set_ylabel("loss")
    last.set_title(f"last {zoom} iterations (bounded runs)")
    last.legend(
        *full.get_legend_handles_labels(), fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5)
    )
    _save(fig, path)


def twin_divergence(averaged: Mapping[float, np.ndarray], window: int, path: str):
    """Figure 4 right: moving average of the k=1 vs k=3 relative-L1 divergence per lr."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    floor = 1e-18  # zero divergence (bit-identical twins) drawn at the bottom of the log axis
    for lr, curve in averaged.items():
        ax.semilogy(np.maximum(curve, floor), label=f"lr = {lr:g}")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"relative L1 divergence ({window}-iteration mean)")
    ax.set_title("k = 1 vs k = 3 twins")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    _save(fig, path)


def phase_diagram(
    observed: Sequence[tuple[float, float, str]],
    boundaries: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str,
):
    """Observed class of each (alpha, lr) run over the predicted boundary curves lr(alpha).

    Log axes ticked at exactly the alphas and lrs that were run, labelled in plain numbers;
    the legend sits outside, right of the axes."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, (alphas, lrs) in boundaries.items():
        ax.loglog(alphas, lrs, "-", label=name)
    for run_class, (marker, colour) in CLASS_STYLE.items():
        points = [(a, lr) for a, lr, c in observed if c == run_class]
        if points:
            a, lr = zip(*points, strict=True)
            ax.loglog(a, lr, marker, color=colour, ls="none", label=f"observed {run_class}")
    for axis, values in (
        (ax.xaxis, [a for a, _, _ in observed]),
        (ax.yaxis, [lr for _, lr, _ in observed]),
    ):
        ticks = sorted(set(values))
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(lambda value, _: f"{value:g}")
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("weight decay alpha")
    ax.set_ylabel("learning rate")
    ax.set_title("one-layer CNN: observed class vs predicted bounds")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    _save(fig, path)
