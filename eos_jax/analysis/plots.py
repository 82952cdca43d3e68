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
    """Left: final accuracy per perturbation, one line per seed. Right: the two spreads."""
    accuracy = np.asarray(accuracy)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for seed, row in zip(seeds, accuracy, strict=True):
        left.plot(labels, row, marker="o", label=f"seed {seed}")
    left.set(xlabel="perturbation", ylabel="final test accuracy (mean of last 10 evals)",
             title="one line per seed")
    left.legend(fontsize=7)
    per_seed, per_k = np.std(accuracy, 1), np.std(accuracy, 0)
    right.bar(np.arange(len(seeds)) - 0.2, per_seed, 0.4, label="std over perturbations (per seed)")
    right.bar(np.arange(len(labels)) + 0.2, per_k, 0.4, label="std over seeds (per perturbation)")
    right.set(xlabel="seed index / perturbation index", ylabel="population std of accuracy",
              title="rounding spread vs seed spread")
    right.legend(fontsize=7)
    _save(fig, path)


def sources(rows: list[dict], curves: dict[str, tuple], path: str) -> None:
    """Left: accuracy std and churn per source. Right: weight distance D over training."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["source"] for r in rows]
    x = np.arange(len(names))
    left.bar(x - 0.2, [r["final acc std"] for r in rows], 0.4, label="final accuracy std")
    left.bar(x + 0.2, [r["churn"] for r in rows], 0.4, label="churn vs member 0")
    left.set_xticks(x, names, rotation=45, ha="right")
    left.set(title="spread across members, by source")
    left.legend(fontsize=8)
    for name, (steps, d) in curves.items():
        if np.any(np.asarray(d) > 0):
            right.semilogy(steps, d, label=name)
    right.set(xlabel="step", ylabel="weight D to member 0 (mean)",
              title="divergence in weight space")
    right.legend(fontsize=7)
    _save(fig, path)


def fig2(curves: dict[float, tuple], tensor: str, path: str) -> None:
    """The paper's Figure 2: D of one tensor of twins k=1, k=3 against PDE time, per lr."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for lr, (time, d) in sorted(curves.items(), reverse=True):
        ax.plot(time, d, label=f"lr = {lr:.4g}")
    ax.set(xlabel="PDE time (lr x iterations)", ylabel="D = 2 mean |w1-w2| / (|w1|+|w2|)",
           title=f"twins k=1 vs k=3: {tensor}")
    ax.set_yscale("symlog", linthresh=1e-8)
    ax.legend(fontsize=8)
    _save(fig, path)


def tensor_maps(maps: dict[int, np.ndarray], tensor: str, lr: float, path: str) -> None:
    """|w1 - w2| over (output, input) channels at chosen snapshots: where divergence sits."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3 * len(maps), 3.2), squeeze=False)
    for ax, (snapshot, m) in zip(axes[0], sorted(maps.items()), strict=True):
        image = ax.imshow(np.log10(m + 1e-12), cmap="magma", vmin=-12)
        ax.set(title=f"snapshot {snapshot}", xlabel="input channel", ylabel="output channel")
        fig.colorbar(image, ax=ax, fraction=0.046, label="log10 |w1-w2|")
    fig.suptitle(f"{tensor}, lr = {lr:.4g}: mean over the kernel's spatial taps")
    _save(fig, path)
