"""Edge-of-Stability sweeps: does the data-loss sharpness of full-batch training settle at the
linear stability threshold c / lr - wd (curvature.md; linearisation.stability_threshold)?
Adam and AdamW runs read the preconditioned sharpness against
(2 - lr wd)(1 + beta1) / ((1 - beta1) lr) instead (analysis.adaptive; wd: AdamW's decay).

Each run of a sweep is the recipe with a few fields changed (`eos.runs`: one string of
`field=value` overrides per run, e.g. "optimizer.lr=0.05 num_steps=2000"); it is trained
alone (K = 1) with the Sharpness observer, in its own sub-directory of the work directory
(resumed from its checkpoints, skipped when finished). Per run the summary gives the
predicted threshold (c = 2 for GD, 2 + 2 mu heavy ball, (2 + 2 mu) / (1 + 2 mu) Nesterov),
the observed plateau (median data-loss sharpness over the last half of the run), their
ratio, and the first measured step with the sharpness within 5% of the prediction (0 for
a run that starts above it and catapults down); tables (CSV,
Markdown) and figures (sharpness and loss against step; observed against predicted). The
Regions observer (analysis.regions) runs beside it unless `eos.regions_every_steps` is 0:
per layer, the fraction of pre-activations in the paper's transitioning band, in the table
(first and last measurement) and in `regions.png` (beside the sharpness).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from eos_jax import recipe, results
from eos_jax.analysis import adaptive, linearisation, orbit, plots, regions, sharpness
from eos_jax.analysis.one_layer.regions import REGION_THRESHOLD
from eos_jax.studies import rows
from eos_jax.studies.rows import column
from eos_jax.studies.runs import PlannedRun, train_all
from eos_jax.training import build, trainer
from eos_jax.training.ensemble import Ensemble
from eos_jax.training.sources import Member
from eos_jax.training.summary import RunSummary

# the sweeps the configs define (experiments/configs/eos_*.py)
EXPERIMENTS = ("plateau", "weight_decay", "weight_decay_bn", "weight_decay_probe")
EXPERIMENTS += ("momentum", "depth", "weight_decay_edge", "adam", "adamw")
EXPERIMENTS += ("cross_entropy", "complexity", "resnet")


def default_settings(experiment: str) -> ml_collections.ConfigDict:
    """The eos knobs (config.eos) shared by every EoS config; variants set `runs`."""
    e = ml_collections.ConfigDict()
    e.experiment = experiment
    e.runs = ()  # one "field=value field=value" string of recipe overrides per run
    e.sharpness_every_steps = 50
    e.size = 1000  # the first `size` training examples define the Hessian
    e.chunk_size = 1000
    e.k = 1
    e.tol = 1e-3  # relative residual of each eigenpair
    e.max_iters = 200
    # Hessian products reuse one linearisation per measurement (faster; holds the subset's
    # activations in memory: set False for a model whose activations on `size` do not fit)
    e.reuse_linearisation = True
    # Also measure at the midpoint of the last two iterates (the centre of a period-two
    # orbit) and the curvature along the oscillation (Sharpness(midpoint=True)).
    e.midpoint = False
    e.reached_fraction = 0.95  # "reached": sharpness >= this fraction of the prediction
    # A run's phase: at the edge when the centre's plateau is within `phase_spread` robust
    # standard deviations of its own values over the last half (at least the Lanczos tol,
    # relative) of a prediction (c/lr - wd, or c/lr); unresolved where it is near both.
    e.phase_spread = 2.0
    # The orbit's period (analysis.orbit) from the last `orbit_window` steps (0: off).
    e.orbit_window = 0
    # the Regions observer: None = the sharpness cadence, 0 = off
    e.regions_every_steps = ml_collections.config_dict.placeholder(int)
    e.regions_size = 512  # the first `regions_size` training examples
    e.regions_threshold = REGION_THRESHOLD  # t: activated z > t, transitioning |z| <= t
    # The edge mode of the whole update map (linearisation.EdgeRadius): |mu| of the
    # eigenvalue of dU farthest from 1, the one stability number of every optimiser;
    # every so many steps (0: off), by Arnoldi with at most edge_iters products.
    e.edge_every_steps = 0
    e.edge_iters = 30
    return e


@dataclasses.dataclass(frozen=True)
class EosRun(PlannedRun):
    """One run of a sweep: its overrides (as written), its predicted threshold and the
    threshold as if its decay did not count."""

    overrides: str = ""
    predicted: float = float("nan")
    without_decay: float = float("nan")


def optimizer_kind(opt) -> str:
    """'gd', 'heavy_ball' or 'nesterov' (linearisation's names) for a recipe's SGD, or its
    optimizer.name ('adam', 'adamw')."""
    if opt.get("name", "sgd") != "sgd":
        return opt.name
    if opt.momentum == 0:
        return "gd"
    return "nesterov" if opt.nesterov else "heavy_ball"


def predicted_threshold(config, weight_decay: float | None = None) -> float:
    """The largest stable data-loss sharpness c / lr - wd of a constant-lr SGD recipe; for
    Adam and AdamW, of the preconditioned sharpness (adaptive.threshold). weight_decay: in
    place of the recipe's (0: the threshold as if the decay did not count)."""
    opt = config.optimizer
    wd = opt.weight_decay if weight_decay is None else weight_decay
    if opt.get("name", "sgd") != "sgd":  # Adam's coupled decay is refused (`plan`)
        return adaptive.threshold(opt.lr, opt.beta1, wd)
    return linearisation.stability_threshold(optimizer_kind(opt), opt.lr, opt.momentum, wd)


def _name(index: int, text: str) -> str:
    """run{index}_ and the overrides' last field names and values, num_steps left out."""
    overrides = recipe.parse_overrides(text, "eos.runs")
    short = "_".join(f"{k.split('.')[-1]}{v}" for k, v in overrides.items() if k != "num_steps")
    short = "".join(c if c.isalnum() or c in "._-" else "-" for c in short)
    return f"run{index:02d}_{short}" if short else f"run{index:02d}"


def plan(config) -> list[EosRun]:
    """The runs of the sweep, each alone (K = 1). Bad settings: ValueError."""
    e = config.eos
    if e.experiment not in EXPERIMENTS:
        raise ValueError(f"eos.experiment={e.experiment!r}; known: {', '.join(EXPERIMENTS)}")
    if not e.runs:
        raise ValueError("eos.runs is empty: give one 'field=value ...' string per run")
    if not e.phase_spread > 0:
        raise ValueError(f"eos.phase_spread={e.phase_spread!r} must be > 0")
    if not (isinstance(e.orbit_window, int) and (e.orbit_window == 0 or e.orbit_window >= 20)):
        raise ValueError(f"eos.orbit_window={e.orbit_window!r} must be 0 (off) or an integer >= 20")
    if not 0 < e.reached_fraction <= 1:
        raise ValueError(f"eos.reached_fraction={e.reached_fraction!r} must be in (0, 1]")
    if not (isinstance(e.edge_every_steps, int) and e.edge_every_steps >= 0):
        raise ValueError(f"eos.edge_every_steps={e.edge_every_steps!r} must be an integer >= 0")
    if e.regions_every_steps is not None and e.regions_every_steps < 0:
        raise ValueError(f"eos.regions_every_steps={e.regions_every_steps!r} must be None or >= 0")
    _check_observer_settings(e)
    recipe.validate(config)
    runs = []
    for i, text in enumerate(e.runs):
        r = recipe.with_overrides(config, text, "eos.runs")
        if r.optimizer.decay_epochs:
            raise ValueError(
                f"eos.runs {text!r}: the threshold needs a constant lr, got "
                f"optimizer.decay_epochs={tuple(r.optimizer.decay_epochs)}"
            )
        steps = r.get("num_steps")
        if steps is not None and 2 * r.optimizer.get("warmup_steps", 0) > steps:
            raise ValueError(
                f"eos.runs {text!r}: optimizer.warmup_steps={r.optimizer.warmup_steps} must "
                f"end in the first half of the run (num_steps={steps}): the plateau is read "
                "from the second half, at the constant lr"
            )
        if r.optimizer.get("name", "sgd") == "adam" and r.optimizer.weight_decay:
            raise ValueError(
                f"eos.runs {text!r}: Adam's coupled decay enters its moments, and its threshold "
                "is not one of the data loss's preconditioned sharpness: use "
                f"optimizer.weight_decay=0 or optimizer.name='adamw', got "
                f"optimizer.weight_decay={r.optimizer.weight_decay!r}"
            )
        predicted = predicted_threshold(r)
        if predicted <= 0:
            raise ValueError(
                f"eos.runs {text!r}: the weight decay alone makes this step unstable (predicted "
                f"threshold {predicted:.3g} <= 0: lr * wd >= 2 under AdamW, c / lr - wd <= 0 "
                "under SGD): lower lr or wd"
            )
        members = [Member("recipe", r)]
        without = predicted_threshold(r, weight_decay=0.0)
        run = EosRun(_name(i, text), r, members, text, predicted, without_decay=without)
        runs.append(run)
    return runs


def _check_observer_settings(e) -> None:
    """ValueError naming the eos.* field (as --config.eos.* spells it), its value and what
    is allowed, for the settings the observers take (their own errors name no field)."""
    wanted = [("sharpness_every_steps", 1), ("size", 1), ("chunk_size", 1), ("k", 1)]
    wanted += [("max_iters", e.k + 1 if recipe.is_int(e.k) else 2)]
    if e.regions_every_steps != 0:
        wanted += [("regions_size", 1)]
    if e.edge_every_steps:
        wanted += [("edge_iters", 2)]
    for name, least in wanted:
        if not (recipe.is_int(e[name]) and e[name] >= least):
            bound = (
                " (eos.k + 1: Lanczos needs more iterations than eigenpairs)"
                if name == "max_iters"
                else ""
            )
            raise ValueError(f"eos.{name}={e[name]!r} must be an integer >= {least}{bound}")
    if not (recipe.is_number(e.tol) and 0 < e.tol < 1):
        raise ValueError(f"eos.tol={e.tol!r} must be a number in (0, 1) (a relative residual)")
    t = e.regions_threshold
    if e.regions_every_steps != 0 and not (recipe.is_number(t) and t > 0):
        raise ValueError(f"eos.regions_threshold={t!r} must be a finite number > 0")


def _check_sizes(e, num_train: int) -> None:
    """ValueError naming eos.size or eos.regions_size beyond the training set."""
    names = ("size", "regions_size") if e.regions_every_steps != 0 else ("size",)
    for name in names:
        if e[name] > num_train:
            raise ValueError(
                f"eos.{name}={e[name]!r} must be an integer in [1, {num_train}] (the first "
                "training examples)"
            )


def _observers(config, runs) -> list:
    """Sharpness, Regions unless eos.regions_every_steps is 0, EdgeRadius when
    eos.edge_every_steps is not 0, Orbit when eos.orbit_window is not 0, and
    PreconditionedSharpness (same cadence as Sharpness) when a run uses Adam."""
    e = config.eos
    out = [
        sharpness.Sharpness(
            e.sharpness_every_steps,
            e.size,
            e.chunk_size,
            e.k,
            e.tol,
            e.max_iters,
            reuse_linearisation=e.reuse_linearisation,
            midpoint=e.midpoint,
        )
    ]
    every = e.sharpness_every_steps if e.regions_every_steps is None else e.regions_every_steps
    if every:
        out.append(regions.Regions(every, e.regions_size, e.regions_size, e.regions_threshold))
    if e.edge_every_steps:
        out.append(linearisation.EdgeRadius(e.edge_every_steps, e.edge_iters))
    if e.orbit_window:
        out.append(orbit.Orbit(e.orbit_window))
    if any(r.recipe.optimizer.get("name", "sgd") != "sgd" for r in runs):
        every, size = e.sharpness_every_steps, e.size
        out.append(adaptive.PreconditionedSharpness(every, size, e.chunk_size, e.tol, e.max_iters))
    return out


def execute(config, workdir: str) -> dict:
    """Trains every run (resuming, skipping finished ones), writes tables and figures."""
    runs = plan(config)
    dataset = build.dataset(config)
    _check_sizes(config.eos, dataset.num_train)
    trainers = {
        r.name: trainer.Trainer(
            Ensemble(r.members, dataset, "unrolled"),
            r.recipe,
            os.path.join(workdir, r.name),
            _observers(config, runs),
        )
        for r in runs
    }
    summaries = train_all(config, workdir, trainers, keep_going=True)
    table_rows, curves = [], {}
    for r in runs:
        records = trainer.read_metrics(os.path.join(workdir, r.name))
        row, curve = summarize_run(r, records, summaries[r.name], config.eos)
        table_rows.append(row)
        curves[r.name] = curve
    flat = [rows.columns(row) for row in table_rows]
    shown = results.shown_columns(flat, SHOWN)  # a diverged run: a row that says so
    table = rows.write(workdir, "eos", table_rows, shown)
    plots.sharpness_curves(curves, os.path.join(workdir, "sharpness.png"))
    if any(row.finished for row in table_rows):  # diverged runs have no plateau to plot
        path = os.path.join(workdir, "predicted_vs_observed.png")
        plots.predicted_vs_observed(table_rows, path)
    if all("transitioning" in c for c in curves.values()):
        plots.regions_curves(curves, os.path.join(workdir, "regions.png"))
    if len({row.weight_decay for row in table_rows}) > 1:
        plots.eos_phases(table_rows, os.path.join(workdir, "phases.png"))
    summary = {"experiment": config.eos.experiment, "table": table, "runs": flat}
    results.finish(workdir, summary)
    return summary


def phase_tolerance(window, spread: float, floor: float) -> float:
    """How far from a prediction a plateau still matches it: `spread` robust standard
    deviations (IQR / 1.349) of the measurements over the window, at least `floor` of their
    median (the eigenvalue's own tolerance)."""
    window = np.asarray(window, dtype=np.float64)
    robust_std = np.subtract(*np.percentile(window, [75, 25])) / 1.349
    return float(max(spread * robust_std, floor * abs(np.median(window))))


def phase(plateau: float, predicted: float, without_decay: float, tolerance: float) -> str:
    """Where a run settled: at the edge c/lr - wd (the prediction), at c/lr (without_decay:
    the threshold as if the decay did not count; AdamW's words are the same),
    unresolved (within `tolerance` of both: the measurement cannot tell them apart), between
    them, or below / above both."""
    decay = without_decay != predicted
    near_prediction = abs(plateau - predicted) <= tolerance
    near_without = decay and abs(plateau - without_decay) <= tolerance
    if near_prediction and near_without:
        return "edge (unresolved)"
    if near_prediction:
        return "edge at c/lr - wd" if decay else "edge"
    if near_without:
        return "edge at c/lr"
    if min(predicted, without_decay) < plateau < max(predicted, without_decay):
        return "between c/lr - wd and c/lr"
    return "below the edge" if plateau < min(predicted, without_decay) else "above the edge"


@dataclasses.dataclass(frozen=True)
class Plateau:
    """The observed plateau (median over the last half) against the prediction, the
    sharpness's first and largest values and the first step where it reached the prediction
    (None: never)."""

    steps: int
    observed_plateau: float
    observed_over_predicted: float
    plateau_iqr: float
    initial_sharpness: float
    max_sharpness: float
    reached_at_step: int | None = column(kept=True)


@dataclasses.dataclass(frozen=True)
class Midpoint:
    """With eos.midpoint: the plateaus of the midpoint sharpness and of the curvature along
    the oscillation (None where not measured)."""

    midpoint_plateau: float | None = None
    oscillation_plateau: float | None = None


@dataclasses.dataclass(frozen=True)
class Edge:
    """With the EdgeRadius observer: the edge radius over the last half, median and IQR."""

    edge_radius: float
    edge_radius_iqr: float


@dataclasses.dataclass(frozen=True)
class Transitioning:
    """With the Regions observer: per layer the transitioning fraction at the first and the
    last measurement ('hidden1 0.91, ...')."""

    transitioning_first: str
    transitioning_last: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finished:
    """Where a finished run settled. data_sharpness_plateau: with Adam, whose plateau
    columns are about the preconditioned sharpness."""

    data_sharpness_plateau: float | None = None
    plateau: Plateau
    final_train_loss: float
    final_test_accuracy: float | None = column(kept=True)
    hvps_per_call: float
    midpoint: Midpoint
    phase_tolerance: float
    phase: str
    period: str | None = None  # with eos.orbit_window
    edge: Edge | None = None
    transitioning: Transitioning | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Diverged:
    """A diverged run: its largest sharpness before, and where and why (`note`)."""

    phase: str = "diverged"
    max_sharpness: float
    note: str


@dataclasses.dataclass(frozen=True)
class EosRow:
    """An eos-table row: the run's recipe, then how it ended (one of diverged, finished)."""

    name: str
    overrides: str
    model: str
    layers: str  # the layer widths (mlp: hidden, cnn1d: widths)
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    predicted_threshold: float
    threshold_without_decay: float  # as if the decay did not count (c / lr)
    diverged: Diverged | None = None
    finished: Finished | None = None

    @property
    def phase(self) -> str:
        return (self.finished or self.diverged).phase


def summarize_run(
    r: EosRun, records: list[dict], done: RunSummary, settings
) -> tuple[EosRow, dict]:
    """One run's row and curves, from its records (through the observers' readers and their
    summaries), its summary and the eos settings (reached_fraction, phase_spread, tol)."""
    measured = sharpness.Sharpness.read(records)
    adam = adaptive.PreconditionedSharpness.read(records)
    steps, values, train_loss = _threshold_sharpness(measured, adam)
    curve = {
        "steps": steps.tolist(),
        "sharpness": values.tolist(),
        "loss": train_loss.tolist(),
        "predicted": r.predicted,
        "label": f"{r.name}: predicted {r.predicted:.3g}",
        "preconditioned": bool(adam.steps.size),
    }
    if not done.finished:
        most = float(values.max())  # sharpness.extremes' max_sharpness
        return _row(r, diverged=Diverged(max_sharpness=most, note=done.what)), curve
    half = done.steps / 2
    data_plateau = None
    if adam.steps.size:
        at, data_sharpness = measured.member("sharpness", 0)
        data_plateau = float(np.median(data_sharpness[at >= half]))
    last_half = values[steps >= half]
    top = sharpness.extremes(values)  # of the threshold's sharpness (Adam: the preconditioned)
    reached = steps[values >= settings.reached_fraction * r.predicted]
    midpoint, centre = _midpoint(measured, half, curve, last_half)
    plateau = float(np.median(centre))  # the orbit's centre where measured
    tolerance = phase_tolerance(centre, settings.phase_spread, settings.tol)
    finished = Finished(
        data_sharpness_plateau=data_plateau,
        plateau=_plateau(r.predicted, last_half, top, reached, done.steps),
        final_train_loss=float(train_loss[-1]),
        final_test_accuracy=done.members[0].last_test_accuracy,
        hvps_per_call=sharpness.Sharpness.summary(measured, 0).sharpness_hvps_per_call,
        midpoint=midpoint,
        phase_tolerance=tolerance,
        phase=phase(plateau, r.predicted, r.without_decay, tolerance),
        period=_period(records),
        edge=_edge(records, half, curve),
        transitioning=_transitioning(records, curve),
    )
    return _row(r, finished=finished), curve


def _row(r: EosRun, **outcome) -> EosRow:
    """The run's row: the columns its recipe decides, and `outcome` (diverged or finished)."""
    opt, recipe_ = r.recipe.optimizer, r.recipe
    return EosRow(
        name=r.name,
        overrides=r.overrides,
        model=recipe_.model,
        layers=str(
            tuple(recipe_.model_kwargs.get("hidden", recipe_.model_kwargs.get("widths", ())))
        ),
        optimizer=optimizer_kind(opt),
        lr=float(opt.lr),
        weight_decay=float(opt.weight_decay),
        momentum=float(opt.momentum),
        predicted_threshold=r.predicted,
        threshold_without_decay=r.without_decay,
        **outcome,
    )


def _threshold_sharpness(measured, adam):
    """(steps, values, training-set loss) of the sharpness the run's threshold is about: the
    data-loss sharpness, or for Adam the preconditioned one (at the steps both measured)."""
    steps, values = measured.member("sharpness", 0)
    train_loss = measured.member("train_set_loss", 0)[1]
    if adam.steps.size:
        keep = np.isin(steps, adam.steps)
        steps, values = adam.member("preconditioned_sharpness", 0)
        train_loss = train_loss[keep]
    return steps, values, train_loss


def _plateau(predicted: float, last_half, top: sharpness.Extremes, reached, steps: int) -> Plateau:
    """The Plateau from the last half's sharpness, the first and largest (`top`) and the
    steps where it reached the prediction (`reached`)."""
    observed = float(np.median(last_half))
    return Plateau(
        steps=int(steps),
        observed_plateau=observed,
        observed_over_predicted=observed / predicted,
        plateau_iqr=float(np.subtract(*np.percentile(last_half, [75, 25]))),
        initial_sharpness=top.initial_sharpness,
        max_sharpness=top.max_sharpness,
        reached_at_step=int(reached[0]) if reached.size else None,
    )


def _midpoint(measured, half: float, curve: dict, last_half) -> tuple[Midpoint, np.ndarray]:
    """The Midpoint plateaus, their curves into `curve`, and the orbit's centre over the
    last half: the midpoint sharpness where measured, else `last_half`."""
    late = []
    for field in ("midpoint_sharpness", "oscillation_curvature"):
        at, value = measured.member(field, 0)
        late.append(value[at >= half] if at.size else None)
        if at.size:
            curve[field] = (at.tolist(), value.tolist())
    plateaus = Midpoint(*(None if v is None else float(np.median(v)) for v in late))
    return plateaus, last_half if late[0] is None else late[0]


def _period(records: list[dict]) -> str | None:
    """With the Orbit observer: the orbit's period."""
    projection = orbit.Orbit.read(records)
    series = projection.member("projection", 0)[1] if projection.steps.size else ()
    if len(series) < orbit.MIN_LENGTH:  # a run shorter than the window may have fewer
        return None
    return orbit.period_label(orbit.orbit_period(series))


def _edge(records: list[dict], half: float, curve: dict) -> Edge | None:
    """With the EdgeRadius observer: its Edge, the curve into `curve`."""
    edge = linearisation.EdgeRadius.read(records)
    if not edge.steps.size:
        return None
    at, radius = edge.member("radius", 0)
    late = radius[at >= half]
    curve["edge_steps"], curve["edge_radius"] = at.tolist(), radius.tolist()
    return Edge(float(np.median(late)), float(np.subtract(*np.percentile(late, [75, 25]))))


def _transitioning(records: list[dict], curve: dict) -> Transitioning | None:
    """With the Regions observer: its Transitioning (Regions.summary of the run's member),
    the curves into `curve`."""
    bands = regions.Regions.read(records)
    transitioning = regions.Regions.transitioning(bands, 0)
    if not transitioning:
        return None
    shown = regions.Regions.summary(bands, 0)
    curve["regions_steps"] = bands.steps.tolist()
    curve["transitioning"] = {layer: v.tolist() for layer, v in transitioning.items()}
    return Transitioning(_layers(shown.initial_transitioning), _layers(shown.last_transitioning))


def _layers(fractions: dict) -> str:
    """{'hidden1': 0.912, ...} -> 'hidden1 0.91, ...' (a table cell)."""
    return ", ".join(f"{layer} {value:.2f}" for layer, value in fractions.items())


SHOWN = ("name", "optimizer", "lr", "weight_decay", "momentum", "layers", "steps")
SHOWN += ("predicted_threshold", "observed_plateau", "observed_over_predicted", "plateau_iqr")
SHOWN += ("initial_sharpness", "reached_at_step", "final_train_loss", "phase")
SHOWN += ("phase_tolerance", "period")  # period with eos.orbit_window
SHOWN += ("data_sharpness_plateau",)  # Adam: the plateau columns are the preconditioned
SHOWN += ("midpoint_plateau", "oscillation_plateau")  # with eos.midpoint
SHOWN += ("edge_radius", "edge_radius_iqr")  # with the EdgeRadius observer
SHOWN += ("transitioning_first", "transitioning_last")  # with the Regions observer
