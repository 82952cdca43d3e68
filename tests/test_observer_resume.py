"""Issue 23: observers whose measurements depend on what they saw before carry that state
explicitly (Observer.carried, checkpointed with the states), so that a resumed run writes
the records of an uninterrupted one, bit for bit.

One tiny run (test_eos's full-batch fc-tanh MLP on 64 digits, MSE) of two members, heavy
ball and Adam, with the three observers: Sharpness (Lanczos warm-started from each
member's last eigenvectors, with midpoints), PreconditionedSharpness (the same warm starts,
Adam's member only) and EdgeRadius (Arnoldi from a fixed seed per member: no state).
22 steps uninterrupted against 11, then a new trainer (nothing in memory) and 11 more.
The resume is at step 11, the step before a measurement: the midpoint there reads the
restored iterate."""

import shutil

import pytest

from eos_jax.analysis import adaptive, linearisation, sharpness
from eos_jax.training import build, trainer
from eos_jax.training.ensemble import Ensemble
from eos_jax.training.sources import Member
from tests.test_eos import full_batch_config

KINDS = ("sharpness", "preconditioned_sharpness", "edge_mode")
STOP = 11


def config(**overrides):
    return full_batch_config(num_steps=2 * STOP, checkpoint_every_steps=4, **overrides)


def run(workdir, stop_at_step=None):
    """The two members' run in `workdir` with new observers (a fresh process, as far as
    the observers know); resumes from its latest checkpoint."""
    heavy_ball = config(**{"optimizer.momentum": 0.9})
    adam = config(**{"optimizer.name": "adam", "optimizer.lr": 0.01})
    members = [Member("heavy_ball", heavy_ball), Member("adam", adam)]
    ensemble = Ensemble(members, build.dataset(heavy_ball), "unrolled")
    observers = [
        sharpness.Sharpness(4, size=48, chunk_size=48, k=2, midpoint=True),
        adaptive.PreconditionedSharpness(4, size=48, chunk_size=48),
        linearisation.EdgeRadius(4, num_iters=10),
    ]
    trainer.Trainer(ensemble, heavy_ball, str(workdir), observers).run(stop_at_step)


def records(workdir, kind):
    return [r for r in trainer.read_metrics(str(workdir)) if r["kind"] == kind]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run(workdir)
    return {kind: records(workdir, kind) for kind in KINDS}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The work directory of the run stopped at step STOP (checkpointed there)."""
    workdir = tmp_path_factory.mktemp("stopped")
    run(workdir, stop_at_step=STOP)
    return workdir


def test_a_resumed_run_writes_the_observers_records_of_an_uninterrupted_one(
    uninterrupted, stopped, tmp_path
):
    """Every record of the three observers equal (==: eigenvalues, residuals, num_hvps, to
    the bit), among them the measurements at 12, 16, 20 and 22, after the resume at 11."""
    shutil.copytree(stopped, tmp_path / "run")
    run(tmp_path / "run")
    steps = [r["step"] for r in uninterrupted["sharpness"] if r["member"] == 0]
    assert steps == [0, 4, 8, 12, 16, 20, 22]
    assert [r["step"] for r in uninterrupted["preconditioned_sharpness"]] == [4, 8, 12, 16, 20, 22]
    assert all("midpoint_sharpness" in r for r in uninterrupted["sharpness"] if r["step"] > 0)
    for kind in KINDS:
        assert records(tmp_path / "run", kind) == uninterrupted[kind], kind


def forget_carried(monkeypatch):
    """Resumes restore the states but not what the observers carried: they keep what their
    start at step 0 set (cold warm starts), as the in-memory warm starts did."""
    restore = trainer.Trainer._restore

    def states_only(self, states):
        cold = [o.carried for o in self.observers]
        states = restore(self, states)
        for o, carried in zip(self.observers, cold, strict=True):
            o.carried = carried
        return states

    monkeypatch.setattr(trainer.Trainer, "_restore", states_only)


def test_without_the_carried_warm_starts_the_resumed_records_differ(
    uninterrupted, stopped, tmp_path, monkeypatch
):
    """What makes the test above fail: with the carried state not restored (forget_carried),
    both sharpness observers start Lanczos cold (from seed i) after the resume, and every
    record of theirs after step STOP differs from the uninterrupted run's: eigenvalues in
    their last bits (well within tol), and Adam's preconditioned sharpness needs more
    products at step 12 (measured: 11 cold, 6 warm). Those up to STOP are the first
    session's, unchanged. EdgeRadius carries nothing (a fixed seed per member, the batch of
    the step): its records are equal even so."""
    shutil.copytree(stopped, tmp_path / "run")
    forget_carried(monkeypatch)
    run(tmp_path / "run")
    for kind in ("sharpness", "preconditioned_sharpness"):
        cold, warm = records(tmp_path / "run", kind), uninterrupted[kind]
        assert [r for r in cold if r["step"] <= STOP] == [r for r in warm if r["step"] <= STOP]
        after = [(c, w) for c, w in zip(cold, warm, strict=True) if w["step"] > STOP]
        assert after and all(c["step"] == w["step"] and c != w for c, w in after), kind
    (cold,) = [r for r in records(tmp_path / "run", "preconditioned_sharpness") if r["step"] == 12]
    (warm,) = [r for r in uninterrupted["preconditioned_sharpness"] if r["step"] == 12]
    assert cold["num_hvps"] > warm["num_hvps"]
    assert records(tmp_path / "run", "edge_mode") == uninterrupted["edge_mode"]
