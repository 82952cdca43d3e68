"""Sharpness along training: the Sharpness observer (Edge-of-Stability tracking).

Every `every_steps` steps (and at steps 0 and the last), for each member: the k largest
algebraic eigenvalues of the DATA-loss Hessian on a fixed training subset (the first `size`
training examples, unaugmented, in chunks: curvature.hvp_fn), by Lanczos warm-started from
the member's previous eigenvectors, to a relative residual `tol`; and the mean loss and
accuracy over the whole training set at the same parameters. Records (kind 'sharpness'):
eigenvalues, residuals, num_hvps, sharpness (the top data-loss eigenvalue),
total_sharpness (+ the member's coupled weight decay wd, which adds exactly wd),
train_set_loss, train_set_accuracy.

With `midpoint=True` it also measures where the sharpness of an oscillating iterate means
something: at the midpoint of the two last iterates (w_{t-1} + w_t) / 2, the centre of a
period-two orbit (central_flows measures there too), the top data-loss eigenvalue
(midpoint_sharpness) and the curvature along the oscillation d = w_t - w_{t-1}
(oscillation_curvature = d.H d / d.d at the midpoint, one more product). At the edge of a
period-two orbit of GD the iterates sit on both sides of the centre along the top
eigenvector; the iterate's own sharpness then flips between the two sides' curvatures,
while the midpoint's is the curvature of the orbit itself. The observer then also runs one
step before each measurement, to keep w_{t-1} (a copy of the parameters).

The warm starts are what the observer carries (`carried`: each member's last eigenvectors,
saved with every checkpoint), and the iterate before a midpoint measurement that falls
right after a checkpoint is the restored one: a resumed run measures exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from eos_jax.analysis import curvature
from eos_jax.analysis.flat import StateSpace
from eos_jax.training import steps
from eos_jax.training.observers import Observer, itstime, record_fields


@functools.cache
def _chunk_loss(model, loss: str):
    """(params, batch_stats, chunk) -> (summed loss, correct count) at the train-mode forward
    pass (steps.train_mode_loss, as the Hessian's), jitted once per model and loss."""

    def fn(params, batch_stats, batch):
        value, (logits, _) = steps.train_mode_loss(model, loss, params, batch_stats, batch)
        n = batch["label"].shape[0]
        correct = jnp.sum(steps.predictions(logits) == batch["label"])
        return value * n, correct

    return jax.jit(fn)


def set_loss(model, loss: str, params, batch_stats, batches) -> tuple[float, float]:
    """(mean loss, accuracy) over all examples of `batches` (chunk means weighted by size)."""
    fn = _chunk_loss(model, loss)
    totals = [fn(params, batch_stats, b) for b in batches]
    n = sum(len(b["label"]) for b in batches)
    return (
        float(sum(float(t[0]) for t in totals) / n),
        float(sum(int(t[1]) for t in totals) / n),
    )


def cold_starts(run, k: int) -> dict:
    """What an observer that warm-starts Lanczos carries from step 0 (its `carried`, saved
    with every checkpoint): per member, zero vectors (dim, k) over its parameters
    ("vectors") and whether they are its last eigenvectors yet ("warm": none is)."""
    spaces = [StateSpace.of(m.params) for m in run.members()]
    return {
        "vectors": [jnp.zeros((s.dim, k), s.dtype) for s in spaces],
        "warm": jnp.zeros(len(spaces), bool),
    }


def warm_start(carried: dict, i: int):
    """Member i's warm start from `carried` (cold_starts' layout): its last eigenvectors, or
    None (a random start, curvature.top_eigenvalues' seed) before its first measurement."""
    return carried["vectors"][i] if carried["warm"][i] else None


def warmed(carried: dict, i: int, eigenvectors) -> dict:
    """`carried` with member i's new eigenvectors as its next warm start; unchanged when
    Lanczos returned fewer pairs than it carries (it then starts as it did this time)."""
    vectors, warm = carried["vectors"], carried["warm"]
    if eigenvectors.shape != vectors[i].shape:
        return carried
    vectors = [eigenvectors if j == i else v for j, v in enumerate(vectors)]
    return {"vectors": vectors, "warm": warm.at[i].set(True)}


class Sharpness(Observer):
    """Top-k data-loss Hessian eigenvalues of every member (see the module docstring).

    size: the first `size` training examples define H (None: the whole training set);
    chunk_size: examples per Hessian-vector chunk (with BatchNorm the chunk is part of the
    definition of H: use the training batch size); k, tol, max_iters: curvature.top_eigenvalues
    (Lanczos); loss_chunk_size: chunks for the full-set loss; reuse_linearisation: see
    curvature.HessianOperator (False for models whose activations on the whole subset do
    not fit in memory); midpoint: also measure at the midpoint of the last two iterates.
    """

    at_start = True
    kind = "sharpness"
    fields = record_fields(
        "sharpness",
        "total_sharpness",
        "num_hvps",
        "train_set_loss",
        "midpoint_sharpness",
        "oscillation_curvature",
    )

    def __init__(
        self,
        every_steps: int,
        size: int | None = 1000,
        chunk_size: int = 1000,
        k: int = 1,
        tol: float = 1e-3,
        max_iters: int = 200,
        loss_chunk_size: int = 1000,
        reuse_linearisation: bool = True,
        midpoint: bool = False,
    ):
        self.every_steps, self.size, self.chunk_size = every_steps, size, chunk_size
        self.k, self.tol, self.max_iters = k, tol, max_iters
        self.loss_chunk_size = loss_chunk_size
        self.reuse_linearisation, self.midpoint = reuse_linearisation, midpoint
        self._previous: tuple[int, list] | None = None  # (step, member params), for midpoints

    def setup(self, ensemble, num_steps: int) -> None:
        """ValueError for bad settings; builds the fixed subset and the full-set chunks."""
        self.check_every_steps("sharpness")
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"sharpness k={self.k!r} must be an integer >= 1")
        if not 0 < self.tol < 1:
            raise ValueError(f"sharpness tol={self.tol!r} must be in (0, 1)")
        if not (isinstance(self.max_iters, int) and self.max_iters > self.k):
            raise ValueError(f"sharpness max_iters={self.max_iters!r} must be an integer > k")
        self.batches = curvature.train_chunks(ensemble.dataset, self.size, self.chunk_size)
        self.full = curvature.train_chunks(ensemble.dataset, None, self.loss_chunk_size)
        self._previous = self.carried = None

    def start(self, run) -> None:
        """At step 0: no warm start yet (carried: cold_starts, k vectors per member). At any
        start, the iterate kept before a measurement at the next step."""
        if run.step == 0:
            self.carried = cold_starts(run, self.k)
        self._keep_iterate(run)

    def _keep_iterate(self, run) -> None:
        if self.midpoint and self.measures(run.step + 1, run):  # the next is measured
            self._previous = (run.step, [jax.tree.map(np.array, m.params) for m in run.members()])

    def measures(self, step: int, run) -> bool:
        """Whether it measures after `step` steps (its cadence; `due` adds the steps before)."""
        return super().due(step, run)

    def due(self, step: int, run) -> bool:
        """Its measurements, and with `midpoint` the step before each (to keep the iterate)."""
        return itstime(step, **self.cadence(run), before=self.midpoint)

    def _top(self, i: int, model, loss: str, params, batch_stats):
        """The operator at params and its top eigenpairs, warm-started from member i's last."""
        op = curvature.hvp_fn(
            model, loss, params, batch_stats, self.batches, self.reuse_linearisation
        )
        top = curvature.top_eigenvalues(
            op,
            op.dim,
            k=self.k,
            init=warm_start(self.carried, i),
            tol=self.tol,
            max_iters=self.max_iters,
            seed=i,
        )
        self.carried = warmed(self.carried, i, top.eigenvectors)
        return op, top

    def __call__(self, run) -> None:
        stored = self._previous
        previous = stored[1] if stored and stored[0] == run.step - 1 else None
        self._keep_iterate(run)
        if not self.measures(run.step, run):  # only kept the iterate
            return
        values = []
        for i, (member, state) in enumerate(zip(run.ensemble.members, run.members(), strict=True)):
            model, loss = run.ensemble.models[i], member.config.loss
            midpoint = {}
            if previous is not None:
                midpoint = self._at_midpoint(i, model, loss, previous[i], state)
            _, top = self._top(i, model, loss, state.params, state.batch_stats)
            wd = float(member.config.optimizer.weight_decay)
            set_loss_, set_accuracy = set_loss(
                model, loss, state.params, state.batch_stats, self.full
            )
            values.append(
                {
                    "eigenvalues": [float(x) for x in top.eigenvalues],
                    "residuals": [float(x) for x in top.residuals],
                    "num_hvps": int(top.num_hvps),
                    "sharpness": float(top.eigenvalues[0]),
                    "total_sharpness": float(curvature.total_eigenvalues(top, wd)[0]),
                    "weight_decay": wd,
                    "train_set_loss": set_loss_,
                    "train_set_accuracy": set_accuracy,
                    **midpoint,
                }
            )
        self.write(run, values)
        run.progress(sharpness=" ".join(f"{v['sharpness']:.3g}" for v in values))

    def _at_midpoint(self, i: int, model, loss: str, previous, state) -> dict:
        """midpoint_sharpness and oscillation_curvature between the previous and the
        current parameters of member i."""
        params = jax.tree.map(lambda a, b: (a + b) / 2, previous, state.params)
        op, top = self._top(i, model, loss, params, state.batch_stats)
        d = op.space.flatten(state.params) - op.space.flatten(previous)
        norm2 = float(jnp.vdot(d, d))
        along = float(jnp.vdot(d, op(d))) / norm2 if norm2 > 0 else None
        return {"midpoint_sharpness": float(top.eigenvalues[0]), "oscillation_curvature": along}

    @classmethod
    def summary(cls, series, member: int) -> SharpnessSummary:
        """One member's summary from a `read` Series: its initial, last and largest
        sharpness, and the mean Hessian products per measurement."""
        top = extremes(series.member("sharpness", member)[1])
        hvps = float(np.mean(series.member("num_hvps", member)[1]))
        return SharpnessSummary(**dataclasses.asdict(top), sharpness_hvps_per_call=hvps)

    def summarize(self, records, summary) -> None:
        series = self.read(records)
        for i, member in enumerate(summary.members):
            member.add(self.summary(series, i))


@dataclasses.dataclass(frozen=True)
class Extremes:
    """The first, last and largest of one member's measurements of the data-loss sharpness,
    or of another curvature a study reads as its sharpness."""

    initial_sharpness: float
    last_sharpness: float
    max_sharpness: float


@dataclasses.dataclass(frozen=True)
class SharpnessSummary(Extremes):
    """Sharpness's part of a member's summary."""

    sharpness_hvps_per_call: float


def extremes(values: np.ndarray) -> Extremes:
    """The Extremes of one member's measurements."""
    return Extremes(float(values[0]), float(values[-1]), float(values.max()))
