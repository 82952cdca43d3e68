"""Lockstep ensembles: bit-identity claims, the vmap difference, resume, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from eos_jax import bits
from eos_jax.data import load_dataset
from eos_jax.training import ensemble, loop, sources
from tests.test_training import tiny_config

STEPS = 12


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def train(members, dataset, strategy, steps=STEPS):
    ens = ensemble.Ensemble(members, dataset, strategy)
    states = ens.init()
    for s in range(steps):
        states, loss = ens.step(states, s)
    assert np.all(np.isfinite(np.asarray(loss)))
    return [bits.tree_hash(m.params) for m in ens.unpack(states)], ens.unpack(states)


@pytest.mark.parametrize("strategy", ensemble.STRATEGIES)
def test_identical_members_stay_bit_identical(digits, strategy):
    hashes, members = train(sources.make_members(tiny_config(), "none", count=3), digits, strategy)
    assert len(set(hashes)) == 1
    untrained = ensemble.Ensemble(sources.make_members(tiny_config(), "none", count=1), digits)
    assert hashes[0] != bits.tree_hash(untrained.unpack(untrained.init())[0].params)


def test_unrolled_reference_member_is_the_ordinary_run(digits, tmp_path):
    """k = 1 in the ensemble == loop.train_and_evaluate; k = 2, 4 (exact) too; odd k differ."""
    config = tiny_config(num_steps=STEPS)
    alone = loop.train_and_evaluate(config, str(tmp_path))["params_hash"]
    hashes, _ = train(sources.make_members(config, "update_k", (1, 2, 3, 4, 5)), digits, "unrolled")
    assert hashes[0] == hashes[1] == hashes[3] == alone
    assert len({hashes[0], hashes[2], hashes[4]}) == 3


def test_vmap_member_differs_from_the_ordinary_run_by_rounding_only(digits):
    """Measured (docs/twins.md): vmapped kernels round differently; the distance stays tiny."""
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


def test_bad_strategy_and_edits_are_refused(digits):
    members = sources.make_members(tiny_config(), "ulp_init", count=2, tensor="conv1/bias")
    with pytest.raises(ValueError, match="unknown strategy"):
        ensemble.Ensemble(members, digits, "pmap")
    with pytest.raises(ValueError, match="no normal nonzero entry"):
        ensemble.Ensemble(members, digits, "unrolled").init()


@pytest.mark.parametrize("strategy", ensemble.STRATEGIES)
def test_whole_ensemble_resumes_bit_exactly(digits, tmp_path, strategy):
    config = tiny_config(num_steps=STEPS)
    members = sources.make_members(config, "ulp_init", count=3)
    run = lambda name, **kw: ensemble.train_ensemble(  # noqa: E731
        ensemble.Ensemble(members, digits, strategy), config, str(tmp_path / name),
        watch="conv2/kernel", watch_every_steps=3, map_steps=(0, 12), **kw)
    whole = run("whole")
    assert run("split", stop_at_step=6)["stopped_at_step"] == 6
    resumed = run("split")
    assert resumed["resumed_from_step"] == 6
    assert [m["params_hash"] for m in resumed["members"]] == [
        m["params_hash"] for m in whole["members"]]
    metrics = [loop.read_metrics(str(tmp_path / d)) for d in ("whole", "split")]
    assert metrics[0] == metrics[1]
    assert sorted(os.listdir(tmp_path / "split" / "maps")) == ["step_00000000.npz",
                                                                "step_00000012.npz"]
    watch0 = [r for r in metrics[0] if r["kind"] == "watch" and r["step"] == 0]
    assert [r["max_ulp"] for r in watch0] == [0, 0, 0]  # the edit is in conv1, not conv2


SHARDED = textwrap.dedent("""
    import jax, numpy as np
    from eos_jax import bits, numerics
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"))
    from eos_jax.data import load_dataset
    from eos_jax.training import ensemble, sources
    from tests.test_training import tiny_config
    ens = ensemble.Ensemble(sources.make_members(tiny_config(), "update_k", count=4),
                            load_dataset("digits"), "vmap")
    states = ens.init()
    for s in range(4):
        states, loss = ens.step(states, s)
    leaf = jax.tree.leaves(states.params)[0]
    print(jax.device_count(), len(leaf.sharding.device_set),
          leaf.sharding.spec == jax.sharding.PartitionSpec("member"),
          len({bits.tree_hash(m.params) for m in ens.unpack(states)}))
""")


def test_vmap_member_axis_is_sharded_across_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True,
                         env=env, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "4", "True", "4"]
