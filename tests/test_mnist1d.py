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


# ---------------------------------------------------------------- the held-out split

HELDOUT = 500  # generated in ~0.1 s; the real one is 100,000 (~20 s once, then cached)


def test_heldout_split_is_deterministic_balanced_and_disjoint(cache, tmp_path):
    data = load_mnist1d(num_samples=SMALL, heldout_size=HELDOUT, cache_dir=cache)
    images, labels = data.split("heldout")
    assert images.shape == (HELDOUT, 40, 1) and images.dtype == np.float32
    assert labels.dtype == np.int32 and np.bincount(labels).tolist() == [50] * 10
    assert data.splits == ("train", "test", "heldout") and not images.flags.writeable
    # The same arguments in another folder: the same bits, the same stored hash.
    again = load_mnist1d(num_samples=SMALL, heldout_size=HELDOUT, cache_dir=tmp_path / "other")
    names = m1d.HELDOUT_ARRAY_NAMES
    assert m1d.content_sha256(vars(again), names) == m1d.content_sha256(vars(data), names)
    path = m1d.cache_path(cache, m1d.heldout_args(HELDOUT))
    with np.load(path) as stored:
        assert str(stored["sha256"]) == m1d.content_sha256(vars(data), names)
    # Another generator seed than the train/test one: no signal in common.
    assert m1d.DEFAULT_HELDOUT_SEED != m1d.DEFAULT_SEED
    seen = {row.tobytes() for row in np.concatenate([data.train_images, data.test_images])}
    assert not seen & {row.tobytes() for row in images}
    other_seed = load_mnist1d(
        num_samples=SMALL, heldout_size=HELDOUT, heldout_seed=5, cache_dir=cache
    )
    assert not np.array_equal(other_seed.heldout_images, images)
    np.testing.assert_array_equal(other_seed.train_images, data.train_images)


def test_heldout_cache_is_reused_and_a_corrupt_one_refused(cache, monkeypatch):
    load_mnist1d(num_samples=SMALL, heldout_size=HELDOUT, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2  # train/test and held-out, one file each
    path = m1d.cache_path(cache, m1d.heldout_args(HELDOUT))

    def fail(args):
        raise AssertionError("generated despite a cache hit")

    with monkeypatch.context() as patch:
        patch.setattr(m1d, "generate", fail)
        load_mnist1d(num_samples=SMALL, heldout_size=HELDOUT, cache_dir=cache)
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(DatasetCacheError, match=str(path)) as error:
        load_mnist1d(num_samples=SMALL, heldout_size=HELDOUT, cache_dir=cache)
    assert "\n" not in str(error.value)


def test_heldout_options_through_the_registry_and_their_errors(cache):
    options = {"num_samples": SMALL, "heldout_size": 100, "heldout_seed": 9}
    data = load_dataset("mnist1d", data_dir=str(cache), train_subset=50, dataset_kwargs=options)
    assert data.num_train == 50 and len(data.split("heldout")[1]) == 100  # subset keeps it
    plain = load_dataset("mnist1d", data_dir=str(cache), dataset_kwargs={"num_samples": SMALL})
    assert plain.splits == ("train", "test")
    with pytest.raises(ValueError, match="no heldout split.*dataset_kwargs.heldout_size"):
        plain.split("heldout")
    with pytest.raises(ValueError, match="heldout_seed=3 must differ from seed=3"):
        load_mnist1d(num_samples=SMALL, seed=3, heldout_size=100, heldout_seed=3, cache_dir=cache)
    with pytest.raises(
        ValueError,
        match="heldout_size=105 must be 0 \\(no held-out split\\) or a positive multiple of 10",
    ):
        load_mnist1d(num_samples=SMALL, heldout_size=105, cache_dir=cache)
