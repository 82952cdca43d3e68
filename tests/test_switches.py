"""The Switches observer: per-layer pre-activations whose sign differs from member 0's."""

import numpy as np
import pytest

from eos_jax import results
from eos_jax.analysis import regions
from eos_jax.data import normalize, to_unit_float
from eos_jax.training import build, sources, trainer
from eos_jax.training.ensemble import Ensemble
from tests.test_eos import KeepLast, full_batch_config


def test_identical_members_never_switch_and_different_ones_do_as_numpy_counts(tmp_path):
    """Members: init seeds 1, 1 (a copy of member 0) and 2 (other weights). The copy has no
    switch at any step; the other has many, and its count at the last step equals a NumPy
    forward pass of both members' weights over the same probe set."""
    config = full_batch_config(num_steps=4, **{"model_kwargs.hidden": (16, 8)})
    dataset = build.dataset(config)
    members = sources.make_members(config, "init_seed", (1, 1, 2))
    ensemble = Ensemble(members, dataset, "unrolled")
    observer, keep = regions.Switches(2, size=48, chunk_size=20), KeepLast()
    trainer.Trainer(ensemble, config, str(tmp_path), [observer, keep]).run()
    series = regions.Switches.read(trainer.read_metrics(str(tmp_path)))
    np.testing.assert_array_equal(series.steps, [0, 2, 4])
    counts = {f: v for f, v in series.values.items() if f.startswith("switched/")}
    assert set(counts) == {"switched/hidden1", "switched/hidden2"}
    for values in counts.values():
        assert np.all(values[:2] == 0)  # member 0 against itself, and its copy
    images, _ = dataset.split("train")
    x = normalize(to_unit_float(images[:48]), dataset.mean, dataset.std).reshape(48, -1)
    z = []
    for state in (keep.states[0], keep.states[2]):
        (w1, b1), (w2, b2) = (
            (np.asarray(state.params[k]["kernel"]), np.asarray(state.params[k]["bias"]))
            for k in ("hidden1", "hidden2")
        )
        z1 = x @ w1 + b1
        z.append({"hidden1": z1, "hidden2": np.tanh(z1) @ w2 + b2})
    for layer, width in (("hidden1", 16), ("hidden2", 8)):
        expected = int(np.sum((z[0][layer] > 0) != (z[1][layer] > 0)))
        assert series[f"switched/{layer}"][2, -1] == expected
        assert series[f"fraction/{layer}"][2, -1] == pytest.approx(expected / (48 * width))
        assert expected > 0.2 * 48 * width  # other weights: many units on the other side
    first = regions.Switches.first_switch(series)
    assert np.isnan(first["hidden1"][1]) and first["hidden1"][2] == 0
    summary = results.read_json(str(tmp_path / "summary.json"))
    assert summary["members"][1]["first_switch"] == {"hidden1": None, "hidden2": None}
    assert summary["members"][2]["first_switch"] == {"hidden1": 0, "hidden2": 0}


def test_switches_refuse_a_single_member_and_unsupported_models():
    config = full_batch_config()
    dataset = build.dataset(config)
    single = Ensemble(sources.make_members(config, "init_seed", (1, 2))[:1], dataset, "unrolled")
    with pytest.raises(ValueError, match="need >= 2 members, got 1"):
        regions.Switches(1).setup(single, 10)
    config.model, config.model_kwargs = "vgg11", {}
    pair = Ensemble(sources.make_members(config, "init_seed", (1, 2)), dataset, "unrolled")
    with pytest.raises(ValueError, match="model VGG is not supported"):
        regions.Switches(1).setup(pair, 10)
