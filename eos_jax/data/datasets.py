"""Datasets as host NumPy arrays: an embedded offline default and tensorflow-datasets.

Every dataset is loaded whole into memory (CIFAR-10 is 150 MB as uint8), so batches can be
drawn by index in any order: `pipeline.BatchStream` relies on this for resumable,
shareable batch streams.

- 'digits': scikit-learn's bundled 8x8 handwritten digits; no download, the default for
  tests and quick runs.
- 'mnist1d': 40-sample 1-D signals generated offline by the `mnist1d` package and cached
  on disk (mnist1d.py); its options (`num_samples`, `seed`, `heldout_size`,
  `heldout_seed`) come in `dataset_kwargs`. With heldout_size > 0 it also has a 'heldout'
  split: that many more signals from another generator seed, for accuracy on the
  distribution rather than on the 2,000 test signals.
- 'cifar10', 'cifar100', 'mnist', 'fashion_mnist': read from a tensorflow-datasets
  data_dir prepared beforehand in array_record format (random access without TensorFlow).
  Loading never downloads: a dataset that is not prepared is a `DatasetNotPreparedError`
  that says how to prepare it.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# The paper's CIFAR-10 normalisation (docs/paper.md, section 2).
CIFAR10_MEAN = (0.507, 0.487, 0.441)
CIFAR10_STD = (0.267, 0.256, 0.276)

# The digits split: a fixed permutation of the 1,797 images; its first 300 are the test set.
DIGITS_SPLIT_SEED = 0
DIGITS_NUM_TEST = 300

TFDS_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist")
KNOWN_NAMES = ("digits",) + TFDS_NAMES + ("mnist1d",)


class DatasetNotPreparedError(FileNotFoundError):
    """A tensorflow-datasets dataset that is not prepared in the data_dir (no download here)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test splits as read-only host arrays, plus what normalisation needs; some
    datasets (mnist1d with heldout_size) carry a third, 'heldout' split, None elsewhere.

    Images are NHWC, either uint8 (0..255) or float32 in [0, 1]; 1-D signals (mnist1d) are
    NLC float32, already standardised. Labels are int32. `mean` and `std` are per channel,
    for images scaled to [0, 1] (mnist1d: 0 and 1). The constructor marks
    the given arrays read-only, so no batch can alter the data behind a stream.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    heldout_images: np.ndarray | None = None
    heldout_labels: np.ndarray | None = None

    def __post_init__(self):
        for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            array.setflags(write=False)
        if (self.heldout_images is None) != (self.heldout_labels is None):
            raise ValueError("heldout_images and heldout_labels come together or not at all")
        if self.heldout_images is not None:
            self.heldout_images.setflags(write=False)
            self.heldout_labels.setflags(write=False)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test") + (() if self.heldout_images is None else ("heldout",))

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of 'train', 'test' or, where the dataset has one, 'heldout'."""
        if split == "heldout" and self.heldout_images is None:
            raise ValueError(
                f"dataset {self.name!r} has no heldout split (mnist1d makes one with "
                "dataset_kwargs.heldout_size)"
            )
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(self.splits)}")
        return getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    train_subset: int | None = None,
    subset_seed: int = 0,
    dataset_kwargs: Mapping[str, Any] | None = None,
) -> Dataset:
    """Loads a dataset by name; `train_subset` keeps a fixed random subset of the train split.

    The subset (Cohen et al. use 5,000 CIFAR-10 examples) is drawn without replacement by
    `subset_seed` and kept in the original order; normalisation constants stay those of the
    full dataset. `data_dir` is the tensorflow-datasets data directory (None: tfds's
    default, $TFDS_DATA_DIR or ~/tensorflow_datasets); 'mnist1d' caches in its mnist1d/
    folder (None: mnist1d.default_cache_dir()); 'digits' ignores it. `dataset_kwargs` are
    options of the dataset itself (mnist1d: num_samples, seed, heldout_size, heldout_seed);
    the others take none.
    """
    dataset_kwargs = dict(dataset_kwargs or {})
    if dataset_kwargs and name != "mnist1d":
        raise ValueError(f"dataset {name!r} takes no dataset_kwargs, got {sorted(dataset_kwargs)}")
    if name == "digits":
        dataset = _load_digits()
    elif name == "mnist1d":
        dataset = _load_mnist1d(data_dir, dataset_kwargs)
    elif name in TFDS_NAMES:
        dataset = _load_tfds(name, data_dir)
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_NAMES)}")
    if train_subset is None:
        return dataset
    keep = subset_indices(dataset.num_train, train_subset, subset_seed)
    return dataclasses.replace(
        dataset, train_images=dataset.train_images[keep], train_labels=dataset.train_labels[keep]
    )


def subset_indices(num_examples: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a random subset of `size` out of `num_examples`, fixed by `seed`."""
    if not 1 <= size <= num_examples:
        raise ValueError(f"train_subset={size} not in [1, {num_examples}]")
    chosen = np.random.default_rng(seed).choice(num_examples, size=size, replace=False)
    return np.sort(chosen)


def channel_mean_std(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of images as values in [0, 1], in float64."""
    pixels = images.reshape(-1, images.shape[-1])
    if images.dtype == np.uint8:
        # A 256-bin histogram per channel: exact, and no float copy of the whole split.
        counts = np.stack([np.bincount(channel, minlength=256) for channel in pixels.T])
        weights = counts / counts.sum(axis=1, keepdims=True)
        levels = np.arange(256) / 255
        mean = weights @ levels
        std = np.sqrt((weights * (levels - mean[:, None]) ** 2).sum(axis=1))
    else:
        mean = pixels.mean(axis=0, dtype=np.float64)
        std = pixels.std(axis=0, dtype=np.float64)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _load_digits() -> Dataset:
    """scikit-learn's digits: 1,497 train / 300 test, (8, 8, 1) float32 in [0, 1]. Read from
    the file that sklearn.datasets.load_digits reads, without importing scikit-learn (about
    2 s at every start of the default recipe)."""
    package = importlib.util.find_spec("sklearn")
    if package is None:
        raise FileNotFoundError("the digits dataset needs scikit-learn (requirements.txt)")
    path = Path(package.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")  # 1,797 rows: 64 pixels in 0..16, then the label
    images = (table[:, :-1].reshape(-1, 8, 8) / 16).astype(np.float32)[..., None]
    labels = table[:, -1].astype(np.int32)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    test, train = order[:DIGITS_NUM_TEST], order[DIGITS_NUM_TEST:]
    mean, std = channel_mean_std(images[train])
    return Dataset(
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
        num_classes=10,
        name="digits",
        mean=mean,
        std=std,
    )


def _load_mnist1d(data_dir: str | None, options: dict[str, Any]) -> Dataset:
    """MNIST-1D, cached in `data_dir`/mnist1d (None: the default cache folder)."""
    from eos_jax.data import mnist1d

    known = ("num_samples", "seed", "heldout_size", "heldout_seed")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"mnist1d has no option(s) {unknown}; its options: {', '.join(known)}")
    cache_dir = None if data_dir is None else Path(data_dir) / "mnist1d"
    return mnist1d.load_mnist1d(cache_dir=cache_dir, **options)


def prepare_command(name: str, data_dir: str) -> str:
    """The shell command that prepares a tfds dataset for `load_dataset` (needs network)."""
    return (
        f"pip install tensorflow-cpu && "
        f"tfds build {name} --file_format=array_record --data_dir={data_dir}"
    )


def _load_tfds(name: str, data_dir: str | None) -> Dataset:
    """Reads a prepared tfds dataset through its array_record data source; never downloads.

    This is what `tfds.data_source(name, split=..., data_dir=..., download=False)` does,
    with an explicit preparedness check first: tfds's own error for a missing dataset
    blames the file format instead. tfds 4.9.10 keeps GCS disabled, and nothing here calls
    `download_and_prepare`, so no network is touched.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        root = str(builder.data_dir_root)
        raise DatasetNotPreparedError(
            f"tfds dataset {name!r} is not prepared in {builder.data_dir} (array_record); "
            f"build it where there is network (building needs TensorFlow, reading does not): "
            f"`{prepare_command(name, root)}`, or copy a prepared {name}/ folder into {root}"
        )
    train_images, train_labels = _read_split(builder.as_data_source(split="train"))
    test_images, test_labels = _read_split(builder.as_data_source(split="test"))
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else channel_mean_std(train_images)
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=builder.info.features["label"].num_classes,
        name=name,
        mean=mean,
        std=std,
    )


def _read_split(source) -> tuple[np.ndarray, np.ndarray]:
    """All (uint8 images, int32 labels) of a tfds data source, in its stored order.

    Read one example at a time: `__getitems__` would batch the reads, but tfds 4.9.10's
    `mock_data` breaks it, and the tests read through the mock.
    """
    examples = [source[i] for i in range(len(source))]
    images = np.stack([example["image"] for example in examples]).astype(np.uint8, copy=False)
    labels = np.array([example["label"] for example in examples], dtype=np.int32)
    return images, labels
