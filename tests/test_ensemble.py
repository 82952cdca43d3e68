"""Lockstep ensembles: bit-identity claims, the vmap difference, resume, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from eos_jax import bits, distributed, results
from eos_jax.analysis import divergence
from eos_jax.data import load_dataset
from eos_jax.training import ensemble, sources, trainer
from tests.test_training import tiny_config

STEPS = 12
# Each strategy, 'unrolled' in make test-slow (the tests that take it say why).
UNROLLED_SLOW = [
    pytest.param(s, marks=pytest.mark.slow) if s == "unrolled" else s for s in ensemble.STRATEGIES
]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def train(members, dataset, strategy, steps=STEPS, initial_hashes=None):
    ens = ensemble.Ensemble(members, dataset, strategy)
    states = ens.init()
    if initial_hashes is not None:
        initial_hashes.extend(bits.tree_hash(m.params) for m in ens.unpack(states))
    for s in range(steps):
        states, metrics = ens.step(states, ens.batches(s))
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    return [bits.tree_hash(m.params) for m in ens.unpack(states)], ens.unpack(states)


# Unrolled: also shown by test_unrolled_reference_member_is_the_ordinary_run (exact k).
@pytest.mark.parametrize("strategy", UNROLLED_SLOW)
def test_identical_members_stay_bit_identical(digits, strategy):
    initial = []
    hashes, _ = train(
        sources.make_members(tiny_config(), "none", count=3),
        digits,
        strategy,
        initial_hashes=initial,
    )
    assert len(set(hashes)) == 1
    assert hashes[0] != initial[0]  # they did train


def test_unrolled_reference_member_is_the_ordinary_run(digits, tmp_path):
    """k = 1 in the ensemble == trainer.train_and_evaluate; k = 2, 4 (exact) too; odd k differ."""
    config = tiny_config(num_steps=STEPS)
    alone = trainer.train_and_evaluate(config, str(tmp_path)).members[0].params_hash
    hashes, _ = train(sources.make_members(config, "update_k", (1, 2, 3, 4, 5)), digits, "unrolled")
    assert hashes[0] == hashes[1] == hashes[3] == alone
    assert len({hashes[0], hashes[2], hashes[4]}) == 3


def test_vmap_member_stays_within_rounding_of_the_ordinary_run(digits):
    """vmapped kernels may round differently (measured on the CPU: docs/twins.md); whatever
    they do, the distance to the ordinary run stays at rounding level."""
    members = sources.make_members(tiny_config(), "update_k", (1, 3))
    _, unrolled = train(members, digits, "unrolled")
    _, vmapped = train(members, digits, "vmap")
    total = bits.tree_diff(unrolled[0].params, vmapped[0].params)["total"]
    print("vmap vs standalone after", STEPS, "steps:", total)
    assert total["rel_l1"] < 1e-4


@pytest.mark.parametrize("source", ["ulp_init", "bitflip_init", "reduction_order", "data_seed"])
def test_each_source_really_changes_the_trajectory(digits, source):
    hashes, _ = train(sources.make_members(tiny_config(), source, count=2), digits, "unrolled")
    assert hashes[0] != hashes[1]


def test_dtype_members_start_from_one_set_of_weights(digits):
    with jax.enable_x64(True):
        members = sources.make_members(tiny_config(), "dtype")
        ens = ensemble.Ensemble(members, digits, "unrolled")
        fp64, fp32, bf16 = (m.params["conv1"]["kernel"] for m in ens.unpack(ens.init()))
        assert fp64.dtype == np.float64 and bf16.dtype == jax.numpy.bfloat16
        assert bits.tree_hash(fp32) == bits.tree_hash(fp64.astype(np.float32))
        with pytest.raises(ValueError, match="use strategy 'unrolled'"):
            ensemble.Ensemble(members, digits, "vmap")
        hashes, _ = train(members, digits, "unrolled", steps=3)
        assert len(set(hashes)) == 3


def test_bad_strategy_members_edits_and_watch_settings_are_refused(digits):
    members = sources.make_members(tiny_config(), "ulp_init", count=2, tensor="conv1/bias")
    with pytest.raises(ValueError, match="unknown strategy 'pmap'"):
        ensemble.Ensemble(members, digits, "pmap")
    with pytest.raises(ValueError, match="at least 1 member"):
        ensemble.Ensemble([], digits, "unrolled")
    with pytest.raises(ValueError, match="no normal nonzero entry"):
        ensemble.Ensemble(members, digits, "unrolled").init()
    ens = ensemble.Ensemble(sources.make_members(tiny_config(), "update_k", count=2), digits)
    for watch, every, maps, message in [
        ("conv9/kernel", 1, (), "no tensor 'conv9/kernel'"),
        ("conv2/kernel", 0, (), "watch every_steps=0 must be an integer >= 1"),
        ("conv2/kernel", 3, (0, 4), r"map_steps \[4\]"),
        ("conv2/kernel", 3, (15,), r"map_steps \[15\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            divergence.WatchTensor(watch, every, maps).setup(ens, 12)


def test_a_diverging_member_never_ends_in_a_summary(digits, tmp_path):
    """Member 1's huge lr turns its weights to inf/NaN in the last step, where its loss (of
    the weights before the step) is still finite: the final evaluation must catch it."""
    config = tiny_config(num_steps=1)
    wild = config.copy_and_resolve_references()
    wild.optimizer.lr = 1e38  # lr * gradient overflows float32
    members = [sources.Member("ok", config), sources.Member("lr huge", wild)]
    with pytest.raises(trainer.TrainingDiverged, match=r"not finite for member 1 \(lr huge\)"):
        trainer.Trainer(ensemble.Ensemble(members, digits, "unrolled"), config, str(tmp_path)).run()
    assert not os.path.exists(tmp_path / "summary.json")
    assert "member 1 (lr huge)" in results.read_json(str(tmp_path / "diverged.json"))["what"]


# unrolled in make test-slow (~15 s); an unrolled ensemble of one member resumes bit-exactly
# in tests/test_training.py (train_and_evaluate)
@pytest.mark.parametrize("strategy", UNROLLED_SLOW)
def test_whole_ensemble_resumes_bit_exactly(digits, tmp_path, strategy):
    config = tiny_config(num_steps=STEPS)
    members = sources.make_members(config, "ulp_init", count=3)
    run = lambda name, **kw: trainer.Trainer(  # noqa: E731
        ensemble.Ensemble(members, digits, strategy),
        config,
        str(tmp_path / name),
        [divergence.MemberDistance(4), divergence.WatchTensor("conv2/kernel", 3, (0, 12))],
    ).run(**kw)
    whole = run("whole")
    stopped = run("split", stop_at_step=6)
    assert stopped.status == "stopped" and stopped.steps == 6
    other = sources.make_members(config, "ulp_init", (0, 5, 6))  # another ensemble, same recipe
    with pytest.raises(results.WorkdirError, match="different config"):
        trainer.Trainer(
            ensemble.Ensemble(other, digits, strategy), config, str(tmp_path / "split")
        ).run()
    resumed = run("split")
    assert resumed.resumed_from_step == 6
    assert resumed.column("params_hash") == whole.column("params_hash")
    metrics = [trainer.read_metrics(str(tmp_path / d)) for d in ("whole", "split")]
    assert metrics[0] == metrics[1]
    assert sorted(os.listdir(tmp_path / "split" / "maps")) == [
        "step_00000000.npz",
        "step_00000012.npz",
    ]
    watch0 = [r for r in metrics[0] if r["kind"] == "watch" and r["step"] == 0]
    assert [r["max_ulp"] for r in watch0] == [0, 0, 0]  # the edit is in conv1, not conv2
    edits = whole.init_edits
    assert edits[0] is None and edits[2]["amount"] == 2
    assert (
        bits.ulp_distance(np.float32(edits[2]["value_before"]), np.float32(edits[2]["value_after"]))
        == 2
    )


SHARDED = textwrap.dedent("""
    import jax, numpy as np
    from eos_jax import bits, numerics
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"))
    from eos_jax.data import load_dataset
    from eos_jax.training import ensemble, sources
    from tests.test_training import tiny_config
    config = tiny_config(**{"mesh.member": 4, "mesh.data": 1})
    ens = ensemble.Ensemble(sources.make_members(config, "update_k", count=4),
                            load_dataset("digits"), "vmap")
    states = ens.init()
    for s in range(4):
        states, metrics = ens.step(states, ens.batches(s))
    leaf = jax.tree.leaves(states.params)[0]
    print(jax.device_count(), len(leaf.sharding.device_set),
          leaf.sharding.spec == jax.sharding.PartitionSpec("member"),
          len({bits.tree_hash(m.params) for m in ens.unpack(states)}))
""")


@pytest.mark.slow  # a fresh process; members split over devices: tests/test_mesh.py (4 x 2)
def test_vmap_member_axis_is_sharded_across_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run(
        [sys.executable, "-c", SHARDED],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "4", "True", "4"]


def test_strategy_goals_name_the_trade_off():
    assert ensemble.resolve_strategy("bit_identical", "gpu") == "unrolled"
    assert ensemble.resolve_strategy("fast", "tpu") == ensemble.resolve_strategy("auto", "tpu")
    assert ensemble.resolve_strategy("fast", "gpu") == "vmap"
    assert ensemble.resolve_strategy("fast", "cpu") == "unrolled"
    with pytest.raises(ValueError, match="allowed: bit_identical, fast, auto, unrolled, vmap"):
        ensemble.resolve_strategy("pmap")


def test_processes_other_than_0_write_no_results(digits, tmp_path, monkeypatch):
    """Results (metrics, predictions, maps, summary, hashes) come from process 0 alone: two
    processes writing the same file raced each other (a missing temporary file) and hung."""
    monkeypatch.setattr(distributed, "is_primary", lambda: False)
    config = tiny_config(num_steps=STEPS)
    summary = trainer.Trainer(
        ensemble.Ensemble(sources.make_members(config, "ulp_init", count=2), digits, "unrolled"),
        config,
        str(tmp_path),
        [divergence.WatchTensor("conv2/kernel", 3, (0, 12))],
    ).run()
    assert summary.finished
    assert os.listdir(tmp_path) == ["checkpoints"]  # saved by every process, through orbax
    assert "hashes.json" not in os.listdir(tmp_path / "checkpoints")
