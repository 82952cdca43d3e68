r"""The theory experiments as a library: validate a config, run it, write its tables and figure.

config.experiment picks one of: heat (Figure 1), linear_pde (Figure 3 / Table 2),
restrained (Figure 4 left), twins (Figure 4 right), phase (phase diagram). `run` writes CSV
tables, one PNG, summary.md (the predicted-vs-observed table) and summary.json (last), and
returns the summary. experiments/theory.py is the command-line main around it.
"""

from __future__ import annotations

import os

import numpy as np
import tqdm

from eos_jax import numerics, recipe, results
from eos_jax.analysis import one_layer, pde, theory_plots

POLICY = numerics.DtypePolicy("fp64", "fp64")


def _progress(config, items, unit: str = "run"):
    """items, with a progress bar on stderr over them (off with config.quiet)."""
    items = list(items)
    return tqdm.tqdm(
        items,
        desc=config.experiment,
        unit=unit,
        dynamic_ncols=True,
        disable=config.get("quiet", False),
    )


def _one_layer_setup(config):
    """The checkerboard image and the initial kernel the config describes."""
    image = one_layer.checkerboard(config.image_size)
    kernel0 = one_layer.initial_kernel(config.kernel_size, config.seed, config.init_std)
    return image, kernel0


def _setup_with_thresholds(config):
    """Image, initial kernel, and the thresholds predicted at config.alpha."""
    image, kernel0 = _one_layer_setup(config)
    thresholds = one_layer.predicted_thresholds(
        kernel0, image, config.alpha, config.beta, config.label
    )
    return image, kernel0, thresholds


def _gd(config, image, kernel0, lr, alpha, k=1):
    """One GD run of config.steps steps with the config's beta and label."""
    return one_layer.gd_trajectory(
        kernel0,
        image,
        lr=lr,
        alpha=alpha,
        steps=config.steps,
        k=k,
        beta=config.beta,
        label=config.label,
    )


def run_heat(config, workdir):
    """Figure 1: forward Euler on u_t = u_xx at each dt, against the von Neumann bound."""
    u0 = pde.heat_initial_condition(config.points)
    eigenvalues = pde.dense_eigenvalues(pde.heat_dirichlet_matrix(config.points))
    von_neumann, dirichlet = pde.heat_von_neumann_dt(), pde.heat_dirichlet_dt(config.points)
    profiles, rows, table = {}, [], []
    for dt in _progress(config, config.dts):
        u = pde.forward_euler(pde.heat_rhs, u0, dt, config.steps)
        profiles[dt] = u
        rows += [
            {"dt": dt, "step": t, **{f"u{i}": v for i, v in enumerate(u[t])}} for t in range(len(u))
        ]
        growth = float(np.max(np.abs(u[-1])) / np.max(np.abs(u0)))
        table.append(
            {
                "dt": dt,
                "von Neumann dt bound": von_neumann,
                "finite-grid dt bound": dirichlet,
                "predicted spectral radius": pde.max_amplification(eigenvalues, dt),
                "observed growth/step": pde.observed_growth_rate(u),
                "predicted": "stable" if dt <= von_neumann else "unstable",
                "observed": "stable" if growth <= 1 else "unstable",
                f"max abs u at step {config.steps} / at 0": growth,
            }
        )
    results.write_csv(os.path.join(workdir, "heat.csv"), rows)
    theory_plots.heat_profiles(
        profiles, config.shown_steps, os.path.join(workdir, "theory_fig1_heat.png")
    )
    return table, {"von_neumann_dt": von_neumann, "finite_grid_dt": dirichlet}


def _linear_class(rate: float, tol: float = 1e-6) -> str:
    """converges / neutral / diverges from a per-step growth rate (tol: the neutral band)."""
    if rate < 1 - tol:
        return "converges"
    return "diverges" if rate > 1 + tol else "neutral"


def run_linear_pde(config, workdir):
    """Figure 3 / Table 2: the transitioning-region linear PDE over alpha vs the alpha window."""
    image, kernel0 = _one_layer_setup(config)
    spectra = one_layer.regional_spectra(
        image, kernel0.shape, config.beta, config.label, config.normalization
    )
    alpha_min, alpha_max = pde.alpha_window(spectra.transitioning, config.lr)
    norms, observed, predicted, rows, table = {}, {}, {}, [], []
    for alpha in _progress(config, config.alphas):
        iterates = one_layer.run_transitioning_pde(
            kernel0,
            image,
            alpha=alpha,
            dt=config.lr,
            steps=config.steps,
            beta=config.beta,
            label=config.label,
            normalization=config.normalization,
        )
        norms[alpha] = np.sqrt(np.sum(iterates**2, axis=(1, 2)))
        observed[alpha] = pde.observed_growth_rate(iterates)
        predicted[alpha] = pde.max_amplification(alpha + spectra.transitioning, config.lr)
        rows += [{"alpha": alpha, "step": t, "kernel_norm": n} for t, n in enumerate(norms[alpha])]
        table.append(
            {
                "alpha": alpha,
                "alpha_min": alpha_min,
                "alpha_max": alpha_max,
                "predicted spectral radius": predicted[alpha],
                "observed growth/step": observed[alpha],
                "predicted": _linear_class(predicted[alpha]),
                "observed": _linear_class(observed[alpha]),
                "norm K_T / norm K_0": float(norms[alpha][-1] / norms[alpha][0]),
            }
        )
    results.write_csv(os.path.join(workdir, "linear_pde.csv"), rows)
    theory_plots.linear_pde(
        norms,
        observed,
        predicted,
        (alpha_min, alpha_max),
        os.path.join(workdir, "theory_fig3_linear_pde.png"),
    )
    return table, {
        "alpha_min": alpha_min,
        "alpha_max": alpha_max,
        "gram_top_eigenvalue": float(spectra.gram_eigenvalues.max()),
        "gram_top_fourier": float(np.max(np.real(spectra.gram_fourier))),
    }


def _restrained_row(lr, thresholds, trajectory, diagnosis, regions):
    return {
        "lr": lr,
        "2/alpha": thresholds.weight_decay_lr,
        "local bound 2/lambda_max(H*)": thresholds.equilibrium_lr,
        "predicted": thresholds.predicted_class(lr),
        "observed": diagnosis.run_class,
        "final loss": float(trajectory.losses[-1]),
        "tail loss min": diagnosis.tail_loss_range[0],
        "tail loss max": diagnosis.tail_loss_range[1],
        "tail steps lr*kappa>2": diagnosis.unstable_step_fraction,
        "regions visited": ", ".join(dict.fromkeys(signature for signature, _, _ in regions)),
        "region switches": len(regions) - 1,
    }


def _thresholds_summary(thresholds):
    return {
        "alpha": thresholds.alpha,
        "weight_decay_lr": thresholds.weight_decay_lr,
        "activated_lr": thresholds.activated_lr,
        "transitioning_lr": thresholds.transitioning_lr,
        "equilibrium_lr": thresholds.equilibrium_lr,
        "equilibrium_loss": thresholds.equilibrium_loss,
        "equilibrium_hessian_min_max": list(thresholds.equilibrium_hessian),
        "equilibrium_response": thresholds.equilibrium_response,
        "equilibrium_gradient_norm": thresholds.equilibrium_gradient_norm,
        "free_directions": thresholds.free_directions,
    }


def run_restrained(config, workdir):
    """Figure 4 left: GD at alpha = 20 over lr; each run classified beside the predicted bounds."""
    image, kernel0, thresholds = _setup_with_thresholds(config)
    span = one_layer.patch_span(image, kernel0.shape)
    losses, rows, table = {}, [], []
    for lr in _progress(config, config.lrs):
        trajectory = _gd(config, image, kernel0, lr, config.alpha)
        diagnosis = one_layer.diagnose(trajectory, image, config.beta, config.label, span)
        regions = one_layer.region_sequence(trajectory, image, config.beta)
        losses[lr] = trajectory.losses
        rows += [{"lr": lr, "step": t, "loss": v} for t, v in enumerate(trajectory.losses)]
        table.append(_restrained_row(lr, thresholds, trajectory, diagnosis, regions))
    results.write_csv(os.path.join(workdir, "restrained_losses.csv"), rows)
    theory_plots.loss_curves(
        losses,
        f"one-layer CNN, alpha = {config.alpha:g}",
        os.path.join(workdir, "theory_fig4_left_loss.png"),
    )
    return table, {"thresholds": _thresholds_summary(thresholds)}


def run_twins(config, workdir):
    """Figure 4 right: k=1 vs k=3 twins; divergence stays at rounding level or is amplified."""
    image, kernel0, thresholds = _setup_with_thresholds(config)
    averaged, rows, table = {}, [], []
    for lr in _progress(config, config.lrs):
        first, second = (_gd(config, image, kernel0, lr, config.alpha, k) for k in config.k_pair)
        divergence = one_layer.twin_divergence(first, second)
        blowups = [s for s in (first.blowup_step, second.blowup_step) if s >= 0]
        averaged[lr] = one_layer.moving_average(divergence, config.window)
        amplified = np.flatnonzero(averaged[lr] > config.amplified_level)
        rows += [
            {"lr": lr, "step": t, "divergence": d, "moving_average": m}
            for t, (d, m) in enumerate(zip(divergence, averaged[lr], strict=True))
        ]
        predicted = thresholds.predicted_class(lr)
        table.append(
            {
                "lr": lr,
                "predicted": "rounding level" if predicted == "converging" else "amplified",
                "observed": "amplified" if amplified.size else "rounding level",
                "first differing step": int(np.argmax(divergence > 0))
                if np.any(divergence > 0)
                else -1,
                "max moving average": float(np.nanmax(averaged[lr])),
                f"moving average at {config.steps}": float(averaged[lr][-1]),
                f"first step above {config.amplified_level:g}": int(amplified[0])
                if amplified.size
                else -1,
                "first non-finite step": min(blowups, default=-1),
            }
        )
    results.write_csv(os.path.join(workdir, "twins.csv"), rows)
    theory_plots.twin_divergence(
        averaged, config.window, os.path.join(workdir, "theory_fig4_right_twins.png")
    )
    return table, {"thresholds": _thresholds_summary(thresholds), "k_pair": list(config.k_pair)}


def run_phase(config, workdir):
    """Phase diagram: observed class over a (lr, alpha) grid against 2/alpha and the local bound."""
    image, kernel0 = _one_layer_setup(config)
    spectra = one_layer.regional_spectra(image, kernel0.shape, config.beta, config.label)
    span = one_layer.patch_span(image, kernel0.shape)
    observed, rows, table, bounds = [], [], [], {}
    with _progress(config, range(len(config.alphas) * len(config.lrs))) as bar:
        for alpha in config.alphas:
            thresholds = one_layer.predicted_thresholds(
                kernel0, image, alpha, config.beta, config.label, spectra=spectra
            )
            bounds[alpha] = thresholds
            classes = {}
            for lr in config.lrs:
                trajectory = _gd(config, image, kernel0, lr, alpha)
                diagnosis = one_layer.diagnose(trajectory, image, config.beta, config.label, span)
                classes[lr] = diagnosis.run_class
                observed.append((alpha, lr, diagnosis.run_class))
                rows.append(
                    {
                        "alpha": alpha,
                        "lr": lr,
                        "predicted": thresholds.predicted_class(lr),
                        "observed": diagnosis.run_class,
                        "envelope_growth": diagnosis.envelope_growth,
                        "unstable_step_fraction": diagnosis.unstable_step_fraction,
                    }
                )
                bar.update(1)
            table.append(_phase_row(alpha, thresholds, classes))
    results.write_csv(os.path.join(workdir, "phase.csv"), rows)
    alphas = np.array(config.alphas)
    theory_plots.phase_diagram(
        observed,
        {
            "2/alpha (weight-decay bound)": (alphas, 2 / alphas),
            "2/lambda_max(H*) (local bound)": (
                alphas,
                np.array([bounds[a].equilibrium_lr for a in alphas]),
            ),
        },
        os.path.join(workdir, "theory_phase.png"),
    )
    return table, {"thresholds": [_thresholds_summary(t) for t in bounds.values()]}


def _phase_row(alpha, thresholds, classes):
    """Predicted thresholds beside the observed ones: the lrs between which the class changes."""

    def largest(name):
        lrs = [lr for lr, c in classes.items() if c == name]
        return max(lrs) if lrs else float("nan")

    def smallest(name):
        lrs = [lr for lr, c in classes.items() if c == name]
        return min(lrs) if lrs else float("nan")

    return {
        "alpha": alpha,
        "local bound 2/lambda_max(H*)": thresholds.equilibrium_lr,
        "largest lr observed converging": largest("converging"),
        "smallest lr observed restrained": smallest("restrained"),
        "2/alpha": thresholds.weight_decay_lr,
        "largest lr observed restrained": largest("restrained"),
        "smallest lr observed blow-up": smallest("blow-up"),
        "runs as predicted": sum(thresholds.predicted_class(lr) == c for lr, c in classes.items()),
        "runs": len(classes),
    }


EXPERIMENTS = {
    "heat": run_heat,
    "linear_pde": run_linear_pde,
    "restrained": run_restrained,
    "twins": run_twins,
    "phase": run_phase,
}


def _positive(value) -> bool:
    return recipe.is_number(value) and value > 0


def _non_negative(value) -> bool:
    return recipe.is_number(value) and value >= 0


def _rules(config, experiment: str) -> dict:
    """name -> (test of the value, what is allowed) for every field `experiment` reads."""

    def sequence(test, length=None):
        def check(value):
            return (
                isinstance(value, (tuple, list))
                and len(value) > 0
                and (length is None or len(value) == length)
                and all(test(v) for v in value)
            )

        return check

    def steps(minimum, why):
        return (lambda v: recipe.is_int(v) and v >= minimum, f"an integer >= {minimum} ({why})")

    growth = steps(pde.MIN_GROWTH_STEPS, "the observed growth rate needs them")
    diagnosis = steps(one_layer.MIN_CLASSIFY_STEPS, "the run classification needs them")
    lrs = (sequence(_positive), "a non-empty sequence of numbers > 0")
    one_layer_fields = {
        "image_size": (lambda v: recipe.is_int(v) and v >= 2, "an integer >= 2"),
        "kernel_size": (
            lambda v: recipe.is_int(v) and 0 < v < config.image_size,
            f"an integer with 0 < kernel_size < image_size = {config.get('image_size')!r}",
        ),
        "seed": (lambda v: recipe.is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
        "init_std": (_positive, "a number > 0"),
        "beta": (_positive, "a number > 0"),
        "label": (lambda v: recipe.is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    }
    if experiment == "heat":
        return {
            "points": (lambda v: recipe.is_int(v) and v >= 3, "an integer >= 3"),
            "dts": (sequence(_positive), "a non-empty sequence of numbers > 0"),
            "steps": growth,
            "shown_steps": (
                sequence(lambda t: recipe.is_int(t) and 0 <= t <= config.steps),
                f"a non-empty sequence of integers in [0, steps = {config.get('steps')!r}]",
            ),
        }
    if experiment == "linear_pde":
        return one_layer_fields | {
            "lr": (_positive, "a number > 0"),
            "steps": growth,
            "alphas": (sequence(_non_negative), "a non-empty sequence of numbers >= 0"),
            "normalization": (lambda v: v in ("mean", "sum"), "'mean' or 'sum'"),
        }
    if experiment == "restrained":
        return one_layer_fields | {
            "alpha": (_non_negative, "a number >= 0"),
            "lrs": lrs,
            "steps": diagnosis,
        }
    if experiment == "twins":
        return one_layer_fields | {
            "alpha": (_non_negative, "a number >= 0"),
            "lrs": lrs,
            "steps": (lambda v: recipe.is_int(v) and v >= 1, "an integer >= 1"),
            "k_pair": (
                sequence(lambda k: recipe.is_int(k) and k >= 1, length=2),
                "two positive integers (the twins' perturbations k)",
            ),
            "window": (lambda v: recipe.is_int(v) and v >= 1, "an integer >= 1"),
            "amplified_level": (_positive, "a number > 0"),
        }
    return one_layer_fields | {  # phase
        "alphas": (
            sequence(_positive),
            "a non-empty sequence of numbers > 0 (2/alpha is drawn on log axes)",
        ),
        "lrs": lrs,
        "steps": diagnosis,
    }


def validate(config) -> None:
    """Checks every field config.experiment reads; one one-line ValueError for the first bad
    one. Called before anything touches the disk."""
    experiment = config.get("experiment")
    if experiment not in EXPERIMENTS:
        known = ", ".join(EXPERIMENTS)
        raise ValueError(f"config.experiment={experiment!r}; known: {known}")
    rules = _rules(config, experiment)
    missing = [name for name in rules if name not in config]
    if missing:
        raise ValueError(
            f"experiment {experiment!r} needs config fields {', '.join(rules)}; "
            f"missing: {', '.join(missing)}"
        )
    for name, (test, allowed) in rules.items():
        if not test(config[name]):
            raise ValueError(
                f"config.{name} = {config[name]!r} is not allowed for experiment "
                f"{experiment!r}: need {allowed}"
            )


def table_markdown(table: list[dict]) -> str:
    """The predicted-vs-observed table as markdown, numbers to 6 significant digits."""
    return results.markdown_table(table, float_format="{:.6g}")


def execute(config, workdir: str) -> dict:
    """Runs config.experiment into workdir; returns the summary written to summary.json.

    The caller has switched on float64 (the main does it through numerics.configure).
    """
    validate(config)
    pde.require_float64()
    results.prepare_workdir(workdir, config, numerics.fingerprint(POLICY, config))
    runner = EXPERIMENTS[config.experiment]
    table, numbers = runner(config, workdir)
    title = f"# Theory experiment `{config.experiment}`\n\n{runner.__doc__.splitlines()[0]}\n\n"
    results.atomic_write_text(os.path.join(workdir, "summary.md"), title + table_markdown(table))
    summary = {"experiment": config.experiment, "table": table, **numbers}
    results.finish(workdir, summary)
    return summary
