"""Train step under jit/vmap/jvp, and the loop: resume bit-exactness, NaN stop, workdir rules."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax import bits, recipe, results
from eos_jax.data import load_dataset
from eos_jax.models.layers import drawn_flat
from eos_jax.training import build, steps, trainer
from eos_jax.training.checkpoint import CheckpointError


def tiny_config(**overrides):
    config = recipe.default_recipe()
    config.num_steps = 12
    config.batch_size = 64
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.model_kwargs = {"widths": (8, 16)}
    config.quiet = True
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture(scope="module")
def digits_setup():
    config = tiny_config()
    dataset = load_dataset("digits")
    stream = build.stream(config, dataset)
    model = build.model(config, dataset)
    tx = build.optimizer(config, stream.steps_per_epoch)
    state = steps.init_state(model, tx, 0, dataset.train_images.shape[1:])
    return model, tx, state, stream


@pytest.mark.slow  # the same claim, faster: tests/test_ensemble.py (identical members, vmap)
def test_vmapped_identical_members_stay_bit_identical(digits_setup):
    model, tx, state, stream = digits_setup
    members = 3
    stacked = jax.tree.map(lambda x: jnp.stack([x] * members), state)
    step = jax.jit(jax.vmap(steps.make_train_step(model, tx), in_axes=(0, None)))
    for s in range(20):
        stacked, metrics = step(stacked, stream.batch(s))
    hashes = {bits.tree_hash(jax.tree.map(lambda x, i=i: x[i], stacked)) for i in range(members)}
    assert len(hashes) == 1
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    assert bits.tree_hash(jax.tree.map(lambda x: x[0], stacked.params)) != bits.tree_hash(
        state.params
    )


def test_train_step_linearises_with_jvp():
    """jax.jvp of the training map: primal equals the plain step; tangent matches a secant.

    In fp64 so that the central difference is accurate: truncation O(eps^2) ~ 1e-12 and
    rounding ~1e-16/eps ~ 1e-10, far below the 1e-6 relative tolerance.
    """
    with jax.enable_x64(True):
        config = tiny_config(**{"numerics.param_dtype": "fp64", "numerics.compute_dtype": "fp64"})
        dataset = load_dataset("digits")
        stream = build.stream(config, dataset)
        model = build.model(config, dataset)
        tx = build.optimizer(config, stream.steps_per_epoch)
        state = steps.init_state(model, tx, 0, dataset.train_images.shape[1:])
        train_step = steps.make_train_step(model, tx)
        batch = stream.batch(0)

        def params_after_step(params):
            return train_step(state.replace(params=params), batch)[0].params

        step = jax.jit(params_after_step)
        keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state.params))))
        tangent = jax.tree.map(
            lambda x: drawn_flat(next(keys), x.shape, x.dtype, jax.random.normal), state.params
        )
        primal, jvp_out = jax.jit(lambda p, t: jax.jvp(params_after_step, (p,), (t,)))(
            state.params, tangent
        )
        assert bits.tree_hash(primal) == bits.tree_hash(step(state.params))
        eps = 1e-6
        plus = step(jax.tree.map(lambda p, t: p + eps * t, state.params, tangent))
        minus = step(jax.tree.map(lambda p, t: p - eps * t, state.params, tangent))
        flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
        secant = (flat(plus) - flat(minus)) / (2 * eps)
        assert flat(jvp_out).dtype == np.float64
        np.testing.assert_allclose(flat(jvp_out), secant, rtol=0, atol=1e-6 * np.abs(secant).max())


def test_resume_after_a_crash_is_bit_exact(tmp_path):
    """Crosses an epoch and an lr decay with augmentation on; the crash loses a checkpoint
    and leaves metric records beyond the one resumed from."""
    config = tiny_config(
        num_steps=30,
        augment=True,
        checkpoint_every_steps=5,
        eval_every_steps=3,
        **{"optimizer.decay_epochs": (1,)},  # 23 steps per epoch: lr decays at step 23
    )
    whole = trainer.train_and_evaluate(config, str(tmp_path / "whole"))
    split_dir = tmp_path / "split"
    partial = trainer.train_and_evaluate(config, str(split_dir), stop_at_step=14)
    assert partial.status == "stopped" and partial.steps == 14
    assert not results.is_finished(str(split_dir))
    shutil.rmtree(split_dir / "checkpoints" / "14")  # the crash: back to step 10
    assert max(r["step"] for r in trainer.read_metrics(str(split_dir))) == 12
    resumed = trainer.train_and_evaluate(config, str(split_dir))
    assert resumed.resumed_from_step == 10
    assert resumed.members == whole.members
    assert trainer.read_metrics(str(split_dir)) == trainer.read_metrics(str(tmp_path / "whole"))


def test_resume_refuses_a_changed_config_and_a_damaged_checkpoint(tmp_path):
    config = tiny_config()
    trainer.train_and_evaluate(config, str(tmp_path), stop_at_step=4)
    with pytest.raises(results.WorkdirError, match=r"different config \(changed: optimizer.k\)"):
        trainer.train_and_evaluate(tiny_config(**{"optimizer.k": 3}), str(tmp_path))
    step_dir = tmp_path / "checkpoints" / "4"
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x01
    biggest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checkpoint step 4"):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert not results.is_finished(str(tmp_path))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_steps": 0}, r"config.num_steps=0 must be an integer >= 1"),
        ({"eval_every_steps": 0}, r"config.eval_every_steps=0 must be an integer >= 1"),
        ({"loss": "hinge"}, "config.loss='hinge'; allowed: cross_entropy, mse"),
        ({"optimizer.lr": float("inf")}, r"config.optimizer.lr=inf must be a finite number > 0"),
        ({"optimizer.lr": float("nan")}, r"config.optimizer.lr=nan must be a finite number > 0"),
        ({"data_order": "random"}, r"config.data_order='random'; allowed: auto, reshuffle, fixed"),
    ],
)
def test_bad_recipe_values_fail_before_anything_is_written(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        trainer.train_and_evaluate(tiny_config(**override), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_finished_workdir_is_not_overwritten(tmp_path):
    config = tiny_config(num_steps=2)
    trainer.train_and_evaluate(config, str(tmp_path))
    with pytest.raises(results.WorkdirError, match="already holds a finished run"):
        trainer.train_and_evaluate(config, str(tmp_path))


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config(
        **{
            "optimizer.lr": 1e4,
            "optimizer.momentum": 0.0,
            "optimizer.nesterov": False,
            "checkpoint_every_steps": 1,
            "num_steps": 50,
        }
    )
    with pytest.raises(trainer.TrainingDiverged, match="last good checkpoint: step") as err:
        trainer.train_and_evaluate(config, str(tmp_path))
    assert results.read_json(str(tmp_path / "diverged.json"))["status"] == "diverged"
    bad_step = int(str(err.value).split(" at step ")[1].split(";")[0])
    saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert saved[-1] == bad_step - 1
    assert not results.is_finished(str(tmp_path))


def run_train_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


# 4 fresh processes, make test-slow: the CLI trains in tests/test_hardening.py (Ctrl-C, then
# the same command) and tests/test_cli.py (divergence), and bad config values are one line
# through the CLI in tests/test_cli.py (bad flags) and tests/test_hardening.py
@pytest.mark.slow
def test_cli_trains_with_overrides_and_rejects_bad_input_in_one_line(tmp_path):
    ok = run_train_cli(
        f"--workdir={tmp_path / 'ok'}",
        "--config.num_steps=3",
        "--config.optimizer.lr=0.05",
        "--config.quiet=True",
    )
    assert ok.returncode == 0, ok.stderr
    assert results.read_json(str(tmp_path / "ok" / "config.json"))["optimizer"]["lr"] == 0.05
    assert results.is_finished(str(tmp_path / "ok"))
    for bad, message in [
        ("--config.model=resnet7", "config.model='resnet7'; known: resnet20"),
        ("--config.numerics.param_dtype=fp16", "config.numerics.param_dtype='fp16'; allowed"),
        ("--config.dataset=imagenet", "imagenet"),
    ]:
        out = run_train_cli(f"--workdir={tmp_path / 'bad'}", bad)
        assert out.returncode == 1
        assert message in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
        assert not os.path.exists(tmp_path / "bad")


@pytest.mark.slow  # 5 fresh processes, ~100 s CPU: the audit's reference and repeat in
# tests/test_hardening.py, data parallelism changing the bits in tests/test_mesh.py
def test_audit_reports_reproducibility_in_fresh_processes(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.audit",
            f"--workdir={tmp_path}",
            "--steps=3",
            "--config.model_kwargs.widths=(4,8)",
            "--config.batch_size=32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stderr
    assert "bit-identical across fresh processes: YES" in out.stdout
    summary = results.read_json(str(tmp_path / results.SUMMARY))
    runs = {r["variant"]: r for r in summary["runs"]}
    assert runs["repeat"]["identical_to_reference"]
    assert not runs["2_cpu_devices_data=2"]["identical_to_reference"]  # another sum order
    assert summary["fingerprint"]["xla_flags"]


def test_prefetch_keeps_order_and_raises_the_producers_error():
    assert list(trainer.prefetch(lambda i: i * i, range(5))) == [0, 1, 4, 9, 16]
    assert list(trainer.prefetch(lambda i: i, range(0))) == []

    def produce(i):
        if i == 3:
            raise ValueError("bad batch 3")
        return i

    with pytest.raises(ValueError, match="bad batch 3"):
        list(trainer.prefetch(produce, range(6)))


def test_a_run_reads_losses_back_only_when_an_observer_runs(tmp_path, monkeypatch):
    """The host does not wait on the device every step: losses are fetched in one batch per
    observation (here every 4 steps), and a NaN is still pinned to its own step."""
    fetched = []
    original = trainer.Trainer._check_losses

    def spy(self, losses, done):
        fetched.append((done, len(losses)))
        return original(self, losses, done)

    monkeypatch.setattr(trainer.Trainer, "_check_losses", spy)
    trainer.train_and_evaluate(tiny_config(log_every_steps=4), str(tmp_path))
    assert fetched == [(4, 4), (8, 4), (12, 4)]
