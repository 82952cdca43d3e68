"""The one training loop: K >= 1 lockstep members, periodic observers, bit-exact resume.

    Trainer(ensemble, config, workdir, observers).run(stop_at_step) -> summary

validates, prepares the work directory, restores the latest checkpoint, then for each step
runs the jitted step of all members and every observer that is due. The host does not wait
for the device between steps: batches are drawn ahead on a thread, and losses are read back
(and checked finite) only when an observer runs. Resume is bit-exact: the state is
checkpointed whole and the batch of step s is a pure function of (seeds, s).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from eos_jax import bits, distributed, numerics, recipe, results
from eos_jax.training import build
from eos_jax.training import mesh as mesh_lib
from eos_jax.training import observers as obs
from eos_jax.training.checkpoint import Checkpointer, CheckpointError
from eos_jax.training.ensemble import Ensemble
from eos_jax.training.sources import Member
from eos_jax.training.summary import MemberSummary, RunSummary


class TrainingDiverged(RuntimeError):
    """A loss, weight or test logit became NaN or inf; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) while training, with the step reached; the work directory stays
    resumable (checkpoints intact; the lock goes with the process). A KeyboardInterrupt, so
    that nothing catching Exception swallows it."""

    def __init__(self, step: int, checkpoint: int | None):
        self.step, self.checkpoint = step, checkpoint
        resume = f"from step {checkpoint}" if checkpoint else "from the start: no checkpoint yet"
        super().__init__(f"interrupted at step {step}; run the same command to resume ({resume})")


def prefetch(produce, items, depth: int = 2):
    """produce(item) for each item, computed `depth` ahead on a worker thread, in order."""
    items = iter(items)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        queue = collections.deque(pool.submit(produce, i) for i in itertools.islice(items, depth))
        while queue:
            value = queue.popleft().result()
            queue.extend(pool.submit(produce, i) for i in itertools.islice(items, 1))
            yield value


class Run:
    """What observers see of a run at its current step (device values fetched on demand)."""

    def __init__(self, trainer, writer, num_steps: int, end: int, bar):
        self.trainer, self.ensemble = trainer, trainer.ensemble
        self.writer, self.num_steps, self.end, self.bar = writer, num_steps, end, bar
        self.step, self.states, self.metrics = 0, None, {}
        self._members = self._logits = None
        self.stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """Ends the run after this step's observers, as if this step were the last."""
        self.stop_reason = reason

    def at(self, step: int, states, metrics) -> None:
        self.step, self.states, self.metrics = step, states, metrics
        self._members = self._logits = None

    def write(self, record: dict) -> None:
        self.writer.write(record)

    def save_arrays(self, name: str, arrays: dict) -> None:
        """Writes arrays to workdir/name (.npz), in process 0 only, like every result."""
        if distributed.is_primary():
            results.write_npz(os.path.join(self.trainer.workdir, name), arrays)

    def members(self):
        """The member states (TrainState each), unpacked once per step."""
        if self._members is None:
            self._members = self.ensemble.unpack(self.states)
        return self._members

    def test_logits(self) -> list[np.ndarray]:
        """Each member's test-set logits at this step, computed once per step."""
        if self._logits is None:
            self._logits = self.ensemble.logits(self.states, self.trainer.config.eval_batch_size)
        return self._logits

    def check_finite(self, what: str, values) -> None:
        """TrainingDiverged naming the members whose `values` (one pytree each) hold NaN/inf."""
        bad = [
            f"{i} ({m.label})"
            for i, (m, v) in enumerate(zip(self.ensemble.members, values, strict=True))
            if not bits.tree_all_finite(v)
        ]
        if bad:
            raise self.trainer.diverged(
                f"{what} not finite for member {', '.join(bad)} at step {self.step}"
            )

    def progress(self, **values) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)


class Trainer:
    """Trains an Ensemble (K >= 1 members) on config's schedule, writing under workdir.

    metrics.jsonl holds one record per member per observation, with 'step', 'member',
    'label' and 'kind' (train, eval, and whatever extra observers write). config.json holds
    the recipe and ensemble.describe(config), so that a different ensemble is refused the
    workdir; a loss, weight or test logit that is NaN or inf raises TrainingDiverged after
    writing diverged.json. With several processes (eos_jax.distributed) all of them train and
    observe; only process 0 writes files (checkpoints are saved by all, through orbax).
    """

    def __init__(self, ensemble: Ensemble, config, workdir: str, observers=()):
        self.ensemble, self.config, self.workdir = ensemble, config, workdir
        self.observers = [
            obs.TrainLog(
                config.log_every_steps,
                config.get("stop_at_train_loss"),
                config.get("stop_at_train_accuracy"),
            ),
            obs.Evaluate(config.eval_every_steps),
            *observers,
        ]
        self.checkpointer: Checkpointer | None = None
        self._initial = None  # the members' initial states, once prepared

    def diverged(self, what: str) -> TrainingDiverged:
        """Records a divergence in diverged.json (the run stays unfinished); returns the error."""
        last = self.checkpointer.latest_step()
        where = f"last good checkpoint: step {last}" if last else "no checkpoint was saved yet"
        if distributed.is_primary():
            results.write_json(
                os.path.join(self.workdir, "diverged.json"),
                {"status": "diverged", "what": what, "last_checkpoint": last},
            )
        return TrainingDiverged(f"{what}; {where} in {self.checkpointer.directory}")

    def prepare(self):
        """Validates the recipe, builds the members' initial states (init edits applied) and
        sets up every observer, once: bad input fails here, before anything is written.
        `run` reuses what was prepared. Returns the initial states."""
        if self._initial is None:
            recipe.validate(self.config)
            self.num_steps = recipe.total_steps(self.config, self.ensemble.steps_per_epoch)
            initial = self.ensemble.init()
            for o in self.observers:
                o.setup(self.ensemble, self.num_steps)
            self._initial = initial
        return self._initial

    def run(self, stop_at_step: int | None = None) -> RunSummary:
        """Trains to the end (or to stop_at_step, checkpointed: run again to continue),
        resuming from the latest checkpoint in workdir. Returns the summary."""
        config, ensemble = self.config, self.ensemble
        recipe.validate(config, stop_at_step)
        states, self._initial = self.prepare(), None  # the step donates them
        num_steps = self.num_steps
        # Only now that everything is validated and builds does anything go to disk.
        self._prepare_workdir()
        self.checkpointer = Checkpointer(
            os.path.join(self.workdir, "checkpoints"), config.get("max_checkpoints", 2)
        )
        start = self.checkpointer.latest_step() or 0
        end = num_steps if stop_at_step is None else max(start, min(stop_at_step, num_steps))
        run = Run(self, NullWriter(), num_steps, end, bar=None)
        states = self._start(run, states, start)
        observers = [
            *self.observers,
            obs.Checkpoint(self.checkpointer, config.checkpoint_every_steps, self._saved),
        ]
        t0 = time.time()
        states = self._train(run, observers, states, start)
        self.checkpointer.close()
        members = ensemble.unpack(states)
        if run.end < run.num_steps:
            return RunSummary(
                status="stopped",
                steps=run.end,
                planned_steps=run.num_steps,
                members=self._member_summaries(members),
            )
        return self._finish(run, observers, members, start, t0)

    def _prepare_workdir(self) -> None:
        """The work directory for this recipe, ensemble and numerics (process 0 only)."""
        config, ensemble = self.config, self.ensemble
        if not distributed.is_primary():
            return
        policy = recipe.dtype_policy(ensemble.members[0].config)
        saved = {**results.as_dict(config), "ensemble": ensemble.describe(config)}
        results.prepare_workdir(
            self.workdir,
            saved,
            numerics.fingerprint(policy, config, mesh_lib.describe(ensemble.mesh)),
        )

    def _start(self, run: Run, states, start: int):
        """The observers started at step 0, then, resuming, the latest checkpoint restored
        and the observers started again there; the records after it dropped. Returns the
        states to train from."""
        run.at(0, states, {})
        for o in self.observers:  # what they carry starts here (the shapes a restore reads)
            o.start(run)
        if start:
            states = self._restore(states)
            restored = sorted({int(m.step) for m in self.ensemble.unpack(states)})
            if restored != [start]:
                raise CheckpointError(f"checkpoint {start} holds the states of steps {restored}")
            run.at(start, states, {})
            for o in self.observers:
                o.start(run)
        if distributed.is_primary():  # records after the restored step (all, from 0) are redone
            truncate_metrics(self.workdir, start)
        return states

    def _train(self, run: Run, observers: list, states, start: int):
        """The loop with metrics.jsonl open (process 0) and the progress bar closed after it;
        Ctrl-C: TrainingInterrupted naming the step and the last checkpoint."""
        primary = distributed.is_primary()
        with results.MetricsWriter(self.workdir) if primary else NullWriter() as writer:
            run.writer = writer
            try:
                return self._loop(run, observers, states, start)
            except KeyboardInterrupt:
                raise TrainingInterrupted(run.step, self.checkpointer.latest_step()) from None
            finally:  # before any error line, so that it does not follow the bar on its line
                if run.bar is not None:
                    run.bar.close()

    def _member_summaries(self, members) -> list[MemberSummary]:
        """Each member's label and final parameter hash: what every summary starts from."""
        hashes = obs.params_hashes(members)
        return [
            MemberSummary(label=m.label, params_hash=h)
            for m, h in zip(self.ensemble.members, hashes, strict=True)
        ]

    def _finish(self, run: Run, observers: list, members, start: int, t0: float) -> RunSummary:
        """The finished run's summary (each observer adds its part), written last: it marks
        the run finished. Other processes return it unwritten."""
        config, ensemble, num_steps = self.config, self.ensemble, run.num_steps
        summary = RunSummary(
            status="finished",
            steps=num_steps,
            strategy=ensemble.strategy,
            members=self._member_summaries(members),
            init_edits=ensemble.init_edits(),
            seconds_this_session=time.time() - t0,
            resumed_from_step=start,
        )
        if run.stop_reason is not None:
            summary.goal, summary.goal_reached_at_step = run.stop_reason, num_steps
            summary.planned_steps = recipe.total_steps(config, ensemble.steps_per_epoch)
        if not distributed.is_primary():
            summary.process_index = jax.process_index()
            return summary
        records = read_metrics(self.workdir)
        for o in observers:
            o.summarize(records, summary)
        summary.write(self.workdir)
        return summary

    def _carried(self) -> dict:
        """What the observers carry from step to step, by their position (None left out)."""
        return {str(i): o.carried for i, o in enumerate(self.observers) if o.carried is not None}

    def _saved(self, states):
        """What a checkpoint holds: the states and, where any observer carries something,
        what it carries."""
        carried = self._carried()
        return {"states": states, "observers": carried} if carried else states

    def _restore(self, states):
        """The latest checkpoint's states (in the structure of `states`); what the observers
        carried there goes back to them."""
        saved = self.checkpointer.restore(self._saved(states))
        if not self._carried():
            return saved
        for key, carried in saved["observers"].items():
            self.observers[int(key)].carried = carried
        return saved["states"]

    def _loop(self, run: Run, observers: list, states, start: int):
        """Steps from `start` to run.end, running the observers that are due (those of step 0
        first, when starting afresh); returns the last states. A reached goal (an observer's
        request_stop) makes its step the last: run.num_steps and run.end become that step."""
        config, ensemble, workdir = self.config, self.ensemble, self.workdir
        if start == 0:
            for o in observers:
                if o.due(0, run):
                    o(run)
        losses = []  # device arrays, read back when an observer runs
        for step, batch in enumerate(prefetch(ensemble.batches, range(start, run.end)), start):
            states, metrics = ensemble.step(states, batch)
            losses.append(metrics["loss"])
            done = step + 1
            if run.bar is None:  # the first step compiles: the ETA starts after it
                jax.block_until_ready(metrics)
                shown = distributed.is_primary()
                run.bar = progress_bar(config, workdir, run.num_steps, done, shown)
            else:
                run.bar.update(1)
            run.at(done, states, metrics)
            due = [o for o in observers if o.due(done, run)]
            if due:
                self._check_losses(losses, done)
                losses = []
                for o in due:
                    o(run)
                if run.stop_reason is not None and done < run.num_steps:
                    # a goal was reached: this step is the last (final evaluation, etc.)
                    run.num_steps = run.end = done
                    for o in observers:
                        if o not in due and o.due(done, run):
                            o(run)
                    break
        return states

    def _check_losses(self, losses: list, done: int) -> None:
        """TrainingDiverged at the first step (of those since the last check) whose loss is
        not finite in some member."""
        values = np.asarray(jnp.stack(losses))  # (steps, members)
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            step = done - len(losses) + 1 + int(bad[0])
            members = np.flatnonzero(~np.isfinite(values[bad[0]]))
            raise self.diverged(
                f"loss is {values[bad[0], members[0]]} for member "
                f"{', '.join(f'{i} ({self.ensemble.members[i].label})' for i in members)} "
                f"at step {step}"
            )


def train_and_evaluate(config, workdir: str, stop_at_step: int | None = None) -> RunSummary:
    """Trains one recipe (K = 1) with the default observers; see Trainer.run."""
    member = Member("recipe", config)
    ensemble = Ensemble([member], build.dataset(config), strategy="unrolled")
    return Trainer(ensemble, config, workdir).run(stop_at_step)


class NullWriter:
    """What processes other than 0 write metrics to: nothing."""

    def write(self, record: dict) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def progress_bar(
    config, workdir: str, num_steps: int, initial: int, shown: bool = True
) -> tqdm.tqdm:
    """A step progress bar named after the work directory (off with config.quiet and in
    processes other than 0)."""
    return tqdm.tqdm(
        total=num_steps,
        initial=initial,
        desc=os.path.basename(os.path.normpath(workdir)),
        unit="step",
        dynamic_ncols=True,
        disable=config.get("quiet", False) or not shown,
    )


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    return results.read_jsonl(path) if os.path.exists(path) else []


def truncate_metrics(workdir: str, step: int) -> None:
    """Drops the records that a run resumed from the checkpoint of `step` will write again:
    those after it, or all of them when there is no checkpoint (step 0: a run killed before
    its first checkpoint starts afresh, step-0 observers included)."""
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return
    kept = [r for r in read_metrics(workdir) if step > 0 and r.get("step", 0) <= step]
    results.write_jsonl(os.path.join(workdir, "metrics.jsonl"), kept)
