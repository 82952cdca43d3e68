"""Periodic observers of a training run: logging, evaluation and checkpointing.

An observer runs every `every_steps` steps and at the last step (at step 0 too if
`at_start`: its `cadence`, which `itstime` alone decides), reads the run through `Run`
(device values are fetched only then), and writes records of its `kind` to metrics.jsonl
(`write`). It owns their layout: `read(records)` gives them back as arrays by member and
step (a `Series`), and summaries, study tables and figures read through it, never through
the records' keys. `summarize` derives its part of summary.json from the records (through
the observer's `summary` of its Series, which studies read too). What an observer
propagates from step to step (a response carried forward, warm-start vectors) is explicit:
its `carried` pytree of arrays, set in `start` and saved with every checkpoint, so that a
resumed run writes exactly the records of an uninterrupted one. Measurements that
compare members live in eos_jax.analysis (they import this module, never the other way
round).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from eos_jax import bits
from eos_jax.training import steps
from eos_jax.training.summary import RunSummary


@dataclasses.dataclass(frozen=True)
class Series:
    """An observer's records as arrays: `steps` (S,), sorted, and per field a (members, S)
    float array (NaN where a member has no record at a step, or its value is None)."""

    steps: np.ndarray
    values: dict[str, np.ndarray]

    def __getitem__(self, field: str) -> np.ndarray:
        return self.values[field]

    def member(self, field: str, member: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one member where it has a value."""
        row = self.values[field][member]
        keep = ~np.isnan(row)
        return self.steps[keep], row[keep]


def kind_records(records: list[dict], kind: str) -> list[dict]:
    """The records of `kind`, in order: for an observer's `read` whose fields depend on what
    was recorded (per-layer or per-tensor names)."""
    return [r for r in records if r.get("kind") == kind]


def read_series(records: list[dict], kind: str, fields: dict[str, Callable[[dict], float]]):
    """The records of `kind` as a Series, each field read by its getter."""
    rows = kind_records(records, kind)
    steps_ = sorted({r["step"] for r in rows})
    column = {s: j for j, s in enumerate(steps_)}
    members = 1 + max((r["member"] for r in rows), default=-1)
    values = {f: np.full((members, len(steps_)), np.nan) for f in fields}
    for r in rows:
        for field, get in fields.items():
            value = get(r)
            values[field][r["member"], column[r["step"]]] = np.nan if value is None else value
    return Series(np.array(steps_, dtype=np.int64), values)


def record_fields(*names: str) -> dict[str, Callable[[dict], float]]:
    """Getters of a record's top-level values (an observer's `fields`), by name; a value a
    record does not have reads as None (NaN in the Series)."""
    return {name: (lambda record, name=name: record.get(name)) for name in names}


def itstime(
    step: int,
    every_steps: int,
    *,
    at_start: bool = False,
    at: tuple = (),
    first_step: int = 0,
    last_step: int | None = None,
    before: bool = False,
) -> bool:
    """Whether an observer runs after `step` steps: the one cadence rule (big_vision's
    itstime). Every `every_steps` steps and at the steps in `at` (a run's last step); at step
    0 only if `at_start`; never before `first_step`; never after `last_step`, and at it;
    with `before`, also at the step before each of those (not step 0: the iterate a
    measurement at the next step needs)."""
    if (
        before
        and step > 0
        and itstime(step + 1, every_steps, at=at, last_step=last_step, first_step=first_step)
    ):
        return True
    if step == 0:
        return at_start
    if step < first_step or (last_step is not None and step > last_step):
        return False
    return step % every_steps == 0 or step in at or step == last_step


class Observer:
    """Base class: override `__call__(run)` and, if it adds to the summary, `summarize`.

    kind: the records' kind; fields: {name: getter from a record}, what `read` returns.
    carried: what the observer propagates from step to step (a pytree of arrays; None:
    nothing, its records are all it needs), saved with each checkpoint and restored with
    the states.
    """

    every_steps: int = 1
    last_step: int | None = None  # observes no later step (None: to the end of the run)
    at_start: bool = False
    kind: str = ""
    fields: dict[str, Callable[[dict], float]] = {}
    carried = None

    def setup(self, ensemble, num_steps: int) -> None:
        """Checks the observer's settings against the run before anything is written."""

    def start(self, run) -> None:
        """Called before the first step of a session: at step 0 with the initial states
        (an observer that carries state sets `carried` there: its shapes are what a restore
        reads back), and, when the run resumes, again at the restored step, with `carried`
        restored from the checkpoint."""

    def check_every_steps(self, name: str) -> None:
        """ValueError unless every_steps is an integer >= 1 and last_step None or one (for
        setup; `name` says whose)."""
        for field in ("every_steps", "last_step"):
            value = getattr(self, field)
            if field == "last_step" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {field}={value!r} must be an integer >= 1")

    def cadence(self, run) -> dict:
        """When the observer runs, as itstime's options: every every_steps steps, at step 0 if
        at_start, at the run's last step, up to and at last_step."""
        return {
            "every_steps": self.every_steps,
            "at_start": self.at_start,
            "at": (run.num_steps,),
            "last_step": self.last_step,
        }

    def due(self, step: int, run) -> bool:
        """Whether the observer runs after `step` steps (itstime of its cadence)."""
        return itstime(step, **self.cadence(run))

    def __call__(self, run) -> None:
        raise NotImplementedError

    def write(self, run, values: list[dict]) -> None:
        """One record of this observer's kind per member at the run's step."""
        for i, (m, v) in enumerate(zip(run.ensemble.members, values, strict=True)):
            run.write({"step": run.step, "member": i, "label": m.label, "kind": self.kind, **v})

    @classmethod
    def read(cls, records: list[dict]) -> Series:
        """This observer's records as arrays by member and step."""
        return read_series(records, cls.kind, cls.fields)

    def summarize(self, records: list[dict], summary: RunSummary) -> None:
        """Fills this observer's fields of the summary (a RunSummary) from the records."""


class TrainLog(Observer):
    """Each member's loss and accuracy on the batch of the logged step (not running means,
    so that a resumed run writes exactly the records of an uninterrupted one).

    With a goal (Cohen et al.'s protocol: `stop_at_loss` or `stop_at_accuracy`), it asks the
    run to stop at the first logged step where every member has reached it; the trainer then
    ends the run there as if it were the last step.
    """

    kind = "train"
    fields = record_fields("train_loss", "train_accuracy")

    def __init__(self, every_steps: int, stop_at_loss=None, stop_at_accuracy=None):
        self.every_steps = every_steps
        self.stop_at_loss, self.stop_at_accuracy = stop_at_loss, stop_at_accuracy

    def __call__(self, run) -> None:
        metrics = {k: np.asarray(v) for k, v in run.metrics.items()}
        loss, accuracy = metrics["loss"], metrics["accuracy"]
        self.write(
            run,
            [
                {"train_loss": loss[i], "train_accuracy": accuracy[i]}
                for i in range(len(run.ensemble))
            ],
        )
        if self.stop_at_loss is not None and np.all(loss <= self.stop_at_loss):
            run.request_stop(f"train loss <= {self.stop_at_loss}")
        elif self.stop_at_accuracy is not None and np.all(accuracy >= self.stop_at_accuracy):
            run.request_stop(f"train accuracy >= {self.stop_at_accuracy}")


def read_predictions(workdir: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(predictions (members, examples), labels) of `split` ('test', or 'heldout' where the
    dataset has one) saved by Evaluate at a run's last step."""
    prefix = "" if split == "test" else f"{split}_"
    with np.load(os.path.join(workdir, PREDICTIONS)) as saved:
        if f"{prefix}labels" not in saved:
            raise ValueError(f"{workdir} has no {split} predictions (saved: {', '.join(saved)})")
        members = [k for k in saved if k.startswith(f"{prefix}member")]
        members.sort(key=lambda k: int(k.removeprefix(f"{prefix}member")))
        return np.stack([saved[k] for k in members]), saved[f"{prefix}labels"]


def read_correctness(workdir: str, split: str = "test") -> np.ndarray:
    """Each member's correctness on each example of `split`, (members, examples) bool."""
    predicted, labels = read_predictions(workdir, split)
    return predicted == labels


def final_accuracy(evals, last: int = 10) -> float:
    """The paper's final accuracy: the mean of the last `last` test evaluations."""
    return float(np.mean(list(evals)[-last:]))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(steps.predictions(logits)) == labels))


PREDICTIONS = "predictions.npz"


class Evaluate(Observer):
    """Each member's test accuracy; weights and test logits must be finite. At the last step
    the members' test predictions go to predictions.npz ('member<i>', and 'labels'), for
    per-example statistics (how much of the accuracy spread is the finite set's part), and,
    where the dataset has a 'heldout' split (a large set from the same distribution, e.g.
    mnist1d's heldout_size), each member's accuracy on it (heldout_accuracy) and its
    predictions there ('heldout_member<i>', 'heldout_labels'; uint8, 100 kB per member for
    100,000 signals)."""

    kind = "eval"
    fields = record_fields("test_accuracy", "heldout_accuracy")

    def __init__(self, every_steps: int):
        self.every_steps = every_steps

    def __call__(self, run) -> None:
        run.check_finite("weights", [m.params for m in run.members()])
        logits = run.test_logits()
        run.check_finite("test logits", logits)
        labels = run.ensemble.dataset.test_labels
        values = [{"test_accuracy": accuracy(x, labels)} for x in logits]
        if run.step == run.num_steps:
            self._save_predictions(run, logits, values)
        self.write(run, values)
        run.progress(acc=" ".join(f"{v['test_accuracy']:.3f}" for v in values))

    @staticmethod
    def _save_predictions(run, logits, values) -> None:
        """predictions.npz at the last step; the held-out accuracies into `values`."""
        dataset = run.ensemble.dataset
        saved = {"labels": dataset.test_labels}
        saved |= {f"member{i}": np.asarray(steps.predictions(x)) for i, x in enumerate(logits)}
        if "heldout" in dataset.splits:
            heldout = run.ensemble.logits(
                run.states, run.trainer.config.eval_batch_size, split="heldout"
            )
            saved["heldout_labels"] = dataset.heldout_labels.astype(np.uint8)
            for i, (value, x) in enumerate(zip(values, heldout, strict=True)):
                value["heldout_accuracy"] = accuracy(x, dataset.heldout_labels)
                saved[f"heldout_member{i}"] = np.asarray(steps.predictions(x), np.uint8)
        run.save_arrays(PREDICTIONS, saved)

    def summarize(self, records, summary) -> None:
        series = self.read(records)
        for i, member in enumerate(summary.members):
            evals = series.member("test_accuracy", i)[1]
            member.update(final_accuracy=final_accuracy(evals), last_test_accuracy=float(evals[-1]))
            heldout = series.member("heldout_accuracy", i)[1]
            if heldout.size:
                member.heldout_accuracy = float(heldout[-1])
        summary.final_accuracy_std = float(np.std(summary.column("final_accuracy")))


class Checkpoint(Observer):
    """Saves the whole state (weights checked finite first, so a damaged state is never the
    'last good' checkpoint); also at the step where a run stops early. saved(states): what a
    checkpoint holds (the trainer's: the states and what its observers carry)."""

    def __init__(self, checkpointer, every_steps: int, saved=lambda states: states):
        self.checkpointer, self.every_steps, self.saved = checkpointer, every_steps, saved

    def cadence(self, run) -> dict:
        """Also where the run ends early (run.end)."""
        cadence = super().cadence(run)
        return cadence | {"at": (*cadence["at"], run.end)}

    def __call__(self, run) -> None:
        run.check_finite("weights", [m.params for m in run.members()])
        self.checkpointer.save(run.step, self.saved(run.states))


def params_hashes(members) -> list[str]:
    return [bits.tree_hash(m.params) for m in members]
