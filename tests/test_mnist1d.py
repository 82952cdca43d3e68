"""MNIST-1D: the generated dataset, its on-disk cache, and the models that take it."""

import random
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax.data import DatasetCacheError, load_dataset, load_mnist1d
from eos_jax.data import mnist1d as m1d
from eos_jax.models import create_model

SMALL = 200  # 160 train / 40 test signals: generated in ~30 ms


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any socket connection fails the test: the generator must work offline."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder; the current folder is an empty one that must stay empty."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    yield tmp_path / "cache"
    assert list(workdir.iterdir()) == []  # no pickle left behind (get_dataset writes one)


def test_shapes_dtypes_labels_and_normalisation(cache):
    data = load_mnist1d(num_samples=SMALL, cache_dir=cache)
    assert data.name == "mnist1d" and data.num_classes == 10
    assert data.train_images.shape == (160, 40, 1) and data.test_images.shape == (40, 40, 1)
    assert data.image_shape == (40, 1)
    assert data.train_images.dtype == np.float32 and data.train_labels.dtype == np.int32
    assert set(np.concatenate([data.train_labels, data.test_labels])) == set(range(10))
    # 20 signals of each class, shuffled; the package standardises them all together.
    assert np.bincount(np.concatenate([data.train_labels, data.test_labels])).tolist() == [20] * 10
    everything = np.concatenate([data.train_images, data.test_images])
    assert abs(everything.mean()) < 1e-5 and abs(everything.std() - 1) < 1e-5
    assert (data.mean, data.std) == ((0.0,), (1.0,))


def test_default_split_is_8000_2000(cache):
    data = load_dataset("mnist1d", data_dir=str(cache))
    assert (data.num_train, len(data.test_labels)) == (8000, 2000)
    assert (cache / "mnist1d").is_dir()


def test_same_arguments_same_bits_and_seed_matters(cache, tmp_path):
    first = load_mnist1d(num_samples=SMALL, seed=3, cache_dir=cache)
    regenerated = load_mnist1d(num_samples=SMALL, seed=3, cache_dir=tmp_path / "other")
    other_seed = load_mnist1d(num_samples=SMALL, seed=4, cache_dir=cache)
    assert m1d.content_sha256(vars(first)) == m1d.content_sha256(vars(regenerated))
    assert not np.array_equal(first.train_images, other_seed.train_images)


def test_global_random_state_is_left_alone(cache):
    np.random.seed(123)
    random.seed(123)
    expected = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    load_mnist1d(num_samples=SMALL, cache_dir=cache)
    assert (np.random.rand(), random.random()) == expected


def test_cache_miss_writes_then_hit_reads_without_generating(cache, monkeypatch):
    first = load_mnist1d(num_samples=SMALL, cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"

    def fail(args):
        raise AssertionError("generated despite a cache hit")

    monkeypatch.setattr(m1d, "generate", fail)
    again = load_mnist1d(num_samples=SMALL, cache_dir=cache)
    np.testing.assert_array_equal(again.train_images, first.train_images)
    with pytest.raises(AssertionError, match="generated"):
        load_mnist1d(num_samples=SMALL, seed=7, cache_dir=cache)  # another key: a miss


def test_corrupt_cache_is_refused_naming_the_file(cache):
    load_mnist1d(num_samples=SMALL, cache_dir=cache)
    (path,) = cache.iterdir()
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(DatasetCacheError, match=str(path)):
        load_mnist1d(num_samples=SMALL, cache_dir=cache)


def test_tampered_cache_fails_its_sha256(cache):
    data = load_mnist1d(num_samples=SMALL, cache_dir=cache)
    (path,) = cache.iterdir()
    arrays = {name: np.array(getattr(data, name)) for name in m1d.ARRAY_NAMES}
    arrays["test_labels"][0] = (arrays["test_labels"][0] + 1) % 10
    with np.load(path) as stored:
        extra = {"args": stored["args"], "sha256": stored["sha256"]}
    np.savez(path, **arrays, **extra)
    with pytest.raises(DatasetCacheError, match=f"{path}.*sha256"):
        load_mnist1d(num_samples=SMALL, cache_dir=cache)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 105}, "num_samples=105"),
        ({"num_samples": 0}, "num_samples=0"),
        ({"num_samples": 100.0}, "num_samples=100.0"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_bad_arguments_name_the_value(cache, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_mnist1d(cache_dir=cache, **kwargs)


def test_registry_passes_options_and_rejects_unknown_ones(cache):
    data = load_dataset("mnist1d", data_dir=str(cache), dataset_kwargs={"num_samples": SMALL})
    assert data.num_train == 160
    with pytest.raises(ValueError, match=r"mnist1d has no option\(s\) \['size'\]"):
        load_dataset("mnist1d", data_dir=str(cache), dataset_kwargs={"size": 10})
    with pytest.raises(ValueError, match="'digits' takes no dataset_kwargs"):
        load_dataset("digits", dataset_kwargs={"seed": 1})


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(m1d.CACHE_ENV, str(tmp_path))
    assert m1d.default_cache_dir() == tmp_path / "mnist1d"


@pytest.mark.parametrize("name, kwargs", [("cnn1d", {}), ("mlp", {"hidden": (16,)})])
def test_models_take_signals_natively(name, kwargs):
    model = create_model(name, **kwargs)
    x = jnp.zeros((3, 40, 1))
    variables = model.init(jax.random.key(0), x, train=False)
    assert model.apply(variables, x, train=False).shape == (3, 10)


def test_cnn1d_init_is_he_fan_out_with_zero_bias():
    params = create_model("cnn1d", widths=(64, 64))
    params = params.init(jax.random.key(0), jnp.zeros((1, 40, 1)), train=False)["params"]
    kernel = np.asarray(params["conv2"]["kernel"])
    assert kernel.shape == (5, 64, 64)
    assert abs(kernel.std() - np.sqrt(2 / (5 * 64))) < 0.05 * np.sqrt(2 / (5 * 64))
    assert not np.any(params["conv2"]["bias"])
    head = np.asarray(params["head"]["kernel"])
    assert np.abs(head).max() <= 1 / np.sqrt(64 * 20)


def test_cnn1d_rejects_images():
    model = create_model("cnn1d")
    with pytest.raises(ValueError, match=r"\(N, L, C\).*\(1, 8, 8, 1\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
