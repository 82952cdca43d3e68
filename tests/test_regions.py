"""The Regions observer: per-layer fractions of pre-activations in the paper's three bands."""

import jax
import numpy as np
import pytest

from eos_jax.analysis import regions
from eos_jax.data import Dataset, normalize, to_unit_float
from eos_jax.models import create_model
from eos_jax.studies import eos
from eos_jax.training import build, trainer
from eos_jax.training.ensemble import Ensemble
from eos_jax.training.sources import Member
from eos_jax.training.summary import RunSummary
from experiments.configs import eos_cifar5k
from tests.test_eos import KeepLast, full_batch_config


def numpy_fractions(z, t):
    return [np.mean(z > t), np.mean(np.abs(z) <= t), np.mean(z < -t)]


def test_fractions_equal_numpy_on_a_tiny_mlp_with_known_weights():
    model = create_model("mlp", hidden=(5, 3), num_classes=2)
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(0, 2, (4, 5)), rng.normal(0, 1, 5)
    w2, b2 = rng.normal(0, 2, (5, 3)), rng.normal(0, 1, 3)
    params = {
        "hidden1": {"kernel": w1, "bias": b1},
        "hidden2": {"kernel": w2, "bias": b2},
        "head": {"kernel": rng.normal(size=(3, 2)), "bias": np.zeros(2)},
    }
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    x = rng.normal(0, 1, (40, 2, 2, 1)).astype(np.float32)
    batches = [{"image": x[:16]}, {"image": x[16:]}]  # two chunks of unequal size
    got = regions.region_fractions(model, {"params": params}, batches, threshold=1.5)
    z1 = x.reshape(40, -1) @ w1 + b1
    z2 = np.tanh(z1) @ w2 + b2
    for layer, z in (("hidden1", z1), ("hidden2", z2)):
        fractions = [got[region][layer] for region in regions.REGIONS]
        np.testing.assert_allclose(fractions, numpy_fractions(z, 1.5), atol=1e-12)
        assert sum(fractions) == pytest.approx(1.0)
    assert set(got["transitioning"]) == {"hidden1", "hidden2"}  # the head is not a layer


def test_observer_records_each_layer_at_its_cadence(tmp_path):
    config = full_batch_config(num_steps=10, **{"model_kwargs.hidden": (16, 8)})
    dataset = build.dataset(config)
    ensemble = Ensemble([Member("gd", config)], dataset, "unrolled")
    observer, keep = regions.Regions(5, size=48, chunk_size=32, threshold=0.5), KeepLast()
    trainer.Trainer(ensemble, config, str(tmp_path), [observer, keep]).run()
    records = [r for r in trainer.read_metrics(str(tmp_path)) if r["kind"] == "regions"]
    assert [r["step"] for r in records] == [0, 5, 10]
    last = records[-1]
    assert last["size"] == 48 and last["threshold"] == 0.5
    images, _ = dataset.split("train")
    x = normalize(to_unit_float(images[:48]), dataset.mean, dataset.std).reshape(48, -1)
    p = jax.tree.map(np.asarray, keep.states[0].params)
    z1 = x @ p["hidden1"]["kernel"] + p["hidden1"]["bias"]
    z2 = np.tanh(z1) @ p["hidden2"]["kernel"] + p["hidden2"]["bias"]
    for layer, z in (("hidden1", z1), ("hidden2", z2)):
        fractions = [last[region][layer] for region in regions.REGIONS]
        np.testing.assert_allclose(fractions, numpy_fractions(z, 0.5), atol=1e-12)
    summary = RunSummary.read(str(tmp_path))
    assert summary.members[0].last_transitioning == last["transitioning"]


@pytest.mark.parametrize(
    "override, kwargs, message",
    [
        ({}, {"threshold": 0.0}, "regions threshold=0.0 must be a finite number > 0"),
        ({}, {"every_steps": 0}, "regions every_steps=0 must be an integer >= 1"),
        ({"model": "vgg11", "model_kwargs": {}}, {}, "regions: model VGG is not supported"),
    ],
)
def test_observer_refuses_bad_settings_and_unsupported_models(override, kwargs, message):
    config = full_batch_config(**override)
    ensemble = Ensemble([Member("gd", config)], build.dataset(config), "unrolled")
    with pytest.raises(ValueError, match=message):
        regions.Regions(**{"every_steps": 5, **kwargs}).setup(ensemble, 10)


@pytest.mark.parametrize("net", eos_cifar5k.NETS)
def test_cifar5k_configs_plan_and_build_their_nets_without_the_data(net):
    """CIFAR-10 is not on this machine: check the plan, the shapes and the captured layers on
    a CIFAR-shaped stand-in (two blank images)."""
    config = eos_cifar5k.get_config(net)
    runs = eos.plan(config)
    np.testing.assert_allclose([r.predicted for r in runs], [50, 100, 200], rtol=1e-12)
    r = runs[0].recipe
    assert (r.dataset, r.train_subset, r.batch_size, r.loss) == ("cifar10", 5000, 5000, "mse")
    assert r.batch_size % r.microbatches == 0 and config.eos.chunk_size * r.microbatches == 5000
    images, labels = np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int32)
    shaped = Dataset(images, labels, images, labels, 10, "cifar-shaped", (0.5,) * 3, (0.25,) * 3)
    model = build.model(r, shaped)
    params = model.init(jax.random.key(0), np.zeros((2, 32, 32, 3), np.float32), train=False)
    kernels = {k: v["kernel"].shape for k, v in params["params"].items()}
    fractions = regions.region_fractions(model, params, [{"image": images / 1.0}])
    if net == "fc_tanh":
        assert kernels == {"hidden1": (3072, 200), "hidden2": (200, 200), "head": (200, 10)}
        assert list(fractions["transitioning"]) == ["hidden1", "hidden2"]
    else:
        assert kernels["conv1"] == (3, 3, 3, 32) and kernels["head"] == (64, 10)
        assert list(fractions["transitioning"]) == ["conv1", "conv2", "conv3"]
    with pytest.raises(ValueError, match="eos_cifar5k net 'vgg' is unknown; known: fc_tanh, cnn"):
        eos_cifar5k.get_config("vgg")


def test_with_batch_norm_the_mlp_preactivations_are_the_normalised_ones():
    """mlp with use_batch_norm: the activation reads bn{i}, so tanh(bn1's output) is what hidden2
    multiplies, over the batch's own statistics (train mode)."""
    model = create_model("mlp", hidden=(5, 3), num_classes=2, use_batch_norm=True)
    x = np.random.default_rng(0).normal(0, 1, (16, 2, 2, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    z = regions.preactivations(model, variables, x)
    assert list(z) == ["bn1", "bn2"]
    w1, b1 = (np.asarray(variables["params"]["hidden1"][k]) for k in ("kernel", "bias"))
    h1 = x.reshape(16, -1) @ w1 + b1
    normalised = (h1 - h1.mean(0)) / np.sqrt(h1.var(0) + 1e-5)  # scale 1, bias 0 at init
    np.testing.assert_allclose(z["bn1"], normalised, rtol=1e-4, atol=1e-5)
    w2, b2 = (np.asarray(variables["params"]["hidden2"][k]) for k in ("kernel", "bias"))
    h2 = np.tanh(np.asarray(z["bn1"])) @ w2 + b2
    np.testing.assert_allclose(z["bn2"], (h2 - h2.mean(0)) / np.sqrt(h2.var(0) + 1e-5), atol=1e-4)
