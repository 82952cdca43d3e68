"""The Switches observer: per-layer pre-activations whose sign differs from member 0's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax.analysis import regions
from eos_jax.data import normalize, to_unit_float
from eos_jax.models import create_model
from eos_jax.models.layers import drawn_flat
from eos_jax.training import build, sources, trainer
from eos_jax.training.ensemble import Ensemble
from eos_jax.training.summary import RunSummary
from experiments.configs import mnist1d_resnet
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
    summary = RunSummary.read(str(tmp_path))
    assert summary.members[1].first_switch == {"hidden1": None, "hidden2": None}
    assert summary.members[2].first_switch == {"hidden1": 0, "hidden2": 0}


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


def _conv1d(x, kernel):
    """A 1-D convolution, stride 1 and padding 1 (the ResNet's kernel-3 convs)."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC")
    )


@pytest.mark.parametrize("use_batch_norm", [True, False])
def test_resnet_preactivations_are_what_its_activations_take(use_batch_norm):
    """resnet1d_8 (one block a stage): the stem, each block's first conv (its BatchNorm) and
    each residual sum. ReLU of each is what the next layer reads: the stem's and each bn1's
    feed a kernel-3 conv (recomputed here), each residual sum's is the block's output, and
    the last one, pooled, gives the logits through the head."""
    model = create_model("resnet1d_8", use_batch_norm=use_batch_norm)
    x = drawn_flat(jax.random.key(1), (6, 40, 1), float, jax.random.normal)
    variables = model.init(jax.random.key(0), x, train=False)
    z = regions.preactivations(model, variables, x)
    stem, first = ("stem_bn", "bn1") if use_batch_norm else ("stem_conv", "conv1")
    blocks = [f"stage{s}_block1" for s in (1, 2, 3)]
    assert list(z) == [stem] + [f"{b}/{n}" for b in blocks for n in (first, "residual_sum")]
    logits, state = model.apply(
        variables,
        x,
        train=True,
        capture_intermediates=True,
        mutable=["intermediates", "batch_stats"],
    )
    seen, params = state["intermediates"], variables["params"]
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)
    feeds = {stem: ("stage1_block1", "conv1")}  # pre-activation -> the conv that reads it
    feeds.update({f"{b}/{first}": (b, "conv2") for b in blocks})
    for name, (block, conv) in feeds.items():
        layer = params[block][conv]
        expected = _conv1d(jax.nn.relu(z[name]), layer["kernel"])
        close(seen[block][conv]["__call__"][0], expected + layer.get("bias", 0.0))
    for b in blocks:
        np.testing.assert_array_equal(seen[b]["__call__"][0], jax.nn.relu(z[f"{b}/residual_sum"]))
    pooled = jnp.mean(jax.nn.relu(z["stage3_block1/residual_sum"]), axis=1)
    close(logits, pooled @ params["head"]["kernel"] + params["head"]["bias"])


@pytest.mark.slow  # ~27 s: trains a BatchNorm ResNet; the counting, faster: the MLP test above,
# and each ResNet pre-activation is checked in test_resnet_preactivations_are_what_...
def test_switches_count_every_resnet_preactivation_with_batch_norm(tmp_path):
    """A BatchNorm resnet1d_8 trained by three members (init seeds 1, 1, 2): the copy never
    switches; the other seed switches in each of the 7 pre-activations."""
    config = mnist1d_resnet.get_config()
    config.update_from_flattened_dict(
        {"model": "resnet1d_8", "train_subset": 128, "batch_size": 64, "num_steps": 2}
    )
    config.update_from_flattened_dict({"log_every_steps": 2, "eval_every_steps": 2})
    config.update_from_flattened_dict({"checkpoint_every_steps": 2, "quiet": True})
    members = sources.make_members(config, "init_seed", (1, 1, 2))
    ensemble = Ensemble(members, build.dataset(config), "unrolled")
    observer = regions.Switches(1, size=32, chunk_size=32)
    trainer.Trainer(ensemble, config, str(tmp_path), [observer]).run()
    series = regions.Switches.read(trainer.read_metrics(str(tmp_path)))
    counts = {f: v for f, v in series.values.items() if f.startswith("switched/")}
    assert len(counts) == 7 and "switched/stage2_block1/residual_sum" in counts
    for values in counts.values():
        assert np.all(values[:2] == 0) and np.all(values[2] > 0)
