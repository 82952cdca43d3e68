"""Data layer: datasets, determinism of the batch stream, augmentation, tfds offline."""

import hashlib
import socket
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from eos_jax.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    BatchStream,
    Dataset,
    DatasetNotPreparedError,
    channel_mean_std,
    crop_and_flip,
    eval_batches,
    load_dataset,
    normalize,
    to_unit_float,
)

# sha256 of the digits split and of the first batches of a stream; a change of NumPy's
# generators, of sklearn's bundled data or of this code on any machine shows up here.
DIGITS_SPLIT_SHA256 = "a8fe5c06dbf58d9ff5364767771fc73b1cf3fa1df53b088cb37f2d69601379ba"
DIGITS_STREAM_SHA256 = "e48bf42deef56832c1d61e94c46ea1fc9df5e030c8780d4470fab5af8ba5f5a4"


def sha256_of(arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def split_arrays(dataset: Dataset):
    return dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def synthetic_dataset(train_images: np.ndarray) -> Dataset:
    """A CIFAR-shaped dataset whose labels are the example indices, so order is visible."""
    labels = np.arange(len(train_images), dtype=np.int32)
    return Dataset(
        train_images=train_images,
        train_labels=labels,
        test_images=train_images[:5],
        test_labels=labels[:5],
        num_classes=len(labels),
        name="synthetic",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )


def distinct_images(count: int) -> np.ndarray:
    """uint8 images with no zero pixel, so zero padding is recognisable after cropping."""
    return np.random.default_rng(0).integers(1, 256, size=(count, 32, 32, 3), dtype=np.uint8)


# ---------------------------------------------------------------- datasets


def test_digits_shapes_ranges_and_pinned_split(digits):
    assert digits.train_images.shape == (1497, 8, 8, 1)
    assert digits.test_images.shape == (300, 8, 8, 1)
    assert digits.train_images.dtype == np.float32 and digits.train_labels.dtype == np.int32
    assert digits.train_images.min() == 0.0 and digits.train_images.max() == 1.0
    assert set(np.unique(digits.train_labels)) == set(range(10)) and digits.num_classes == 10
    assert (digits.mean, digits.std) == channel_mean_std(digits.train_images)
    assert digits.mean[0] == pytest.approx(0.3048, abs=1e-4)
    assert digits.std[0] == pytest.approx(0.3757, abs=1e-4)
    assert sha256_of(split_arrays(digits)) == DIGITS_SPLIT_SHA256
    assert sha256_of(split_arrays(load_dataset("digits"))) == DIGITS_SPLIT_SHA256


def test_dataset_arrays_are_read_only(digits):
    with pytest.raises(ValueError, match="read-only"):
        digits.train_images[0, 0, 0, 0] = 1.0


def test_uint8_channel_stats_match_float_computation():
    images = distinct_images(6)
    mean, std = channel_mean_std(images)
    as_float = images.astype(np.float64).reshape(-1, 3) / 255
    np.testing.assert_allclose(mean, as_float.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, as_float.std(axis=0), rtol=1e-12)


def test_train_subset_is_deterministic_and_of_the_asked_size(digits):
    subset = load_dataset("digits", train_subset=100, subset_seed=3)
    again = load_dataset("digits", train_subset=100, subset_seed=3)
    other = load_dataset("digits", train_subset=100, subset_seed=4)
    assert subset.train_images.shape == (100, 8, 8, 1) and len(subset.train_labels) == 100
    np.testing.assert_array_equal(subset.train_images, again.train_images)
    assert not np.array_equal(subset.train_images, other.train_images)
    np.testing.assert_array_equal(subset.test_labels, digits.test_labels)
    assert (subset.mean, subset.std) == (digits.mean, digits.std)
    with pytest.raises(ValueError, match="train_subset"):
        load_dataset("digits", train_subset=digits.num_train + 1)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="known: digits, cifar10, cifar100, mnist, fashion_mnist"):
        load_dataset("imagenet")


# ---------------------------------------------------------------- tfds, offline


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test at once."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    "name, image_shape, num_classes",
    [
        ("cifar10", (32, 32, 3), 10),
        ("cifar100", (32, 32, 3), 100),
        ("mnist", (28, 28, 1), 10),
        ("fashion_mnist", (28, 28, 1), 10),
    ],
)
def test_tfds_datasets_under_mock_data(
    name, image_shape, num_classes, tmp_path, monkeypatch, no_network
):
    # mock_data fakes the data source and download_and_prepare but not is_prepared, which
    # load_dataset checks first; the mocked dataset counts as prepared.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=12):
        dataset = load_dataset(name, data_dir=str(tmp_path))
    assert dataset.train_images.shape == (12, *image_shape)
    assert dataset.test_images.shape == (12, *image_shape)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
    assert dataset.num_classes == num_classes
    assert 0 <= dataset.train_labels.min() and dataset.train_labels.max() < num_classes
    expected_stats = (
        (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else channel_mean_std(dataset.train_images)
    )
    assert (dataset.mean, dataset.std) == expected_stats
    batch = BatchStream(dataset, 4, data_seed=0, aug_seed=0, augment=True).batch(0)
    assert batch["image"].shape == (4, *image_shape) and batch["image"].dtype == np.float32


def test_missing_tfds_dataset_errors_quickly_without_network(tmp_path, no_network):
    start = time.perf_counter()
    with pytest.raises(DatasetNotPreparedError) as error:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert "\n" not in message
    assert f"tfds build cifar10 --file_format=array_record --data_dir={tmp_path}" in message


# ---------------------------------------------------------------- batch stream


def first_batches_sha256(stream: BatchStream, count: int = 3) -> str:
    batches = [stream.batch(step) for step in range(count)]
    return sha256_of(array for batch in batches for array in (batch["image"], batch["label"]))


def test_stream_is_pinned(digits):
    stream = BatchStream(digits, 32, data_seed=1, aug_seed=2, augment=True)
    batch = stream.batch(0)
    assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert first_batches_sha256(stream) == DIGITS_STREAM_SHA256


def test_same_seeds_give_same_batches(digits):
    make = lambda: BatchStream(digits, 32, data_seed=5, aug_seed=6, augment=True)  # noqa: E731
    assert first_batches_sha256(make()) == first_batches_sha256(make())


def test_data_seed_sets_order_and_aug_seed_sets_augmentation():
    # Identical images: a batch's pixels depend only on augmentation, its labels only on order.
    dataset = synthetic_dataset(np.repeat(distinct_images(1), 64, axis=0))
    reference = BatchStream(dataset, 16, data_seed=1, aug_seed=1, augment=True)
    new_order = BatchStream(dataset, 16, data_seed=2, aug_seed=1, augment=True)
    new_augmentation = BatchStream(dataset, 16, data_seed=1, aug_seed=2, augment=True)
    for step in (0, 5):
        batch = reference.batch(step)
        reordered, reaugmented = new_order.batch(step), new_augmentation.batch(step)
        np.testing.assert_array_equal(reordered["image"], batch["image"])
        assert not np.array_equal(reordered["label"], batch["label"])
        np.testing.assert_array_equal(reaugmented["label"], batch["label"])
        assert not np.array_equal(reaugmented["image"], batch["image"])


def test_batches_are_random_access(digits):
    stream = BatchStream(digits, 100, data_seed=3, aug_seed=4, augment=True)
    epoch = stream.steps_per_epoch
    steps = [0, 1, epoch - 1, epoch, 3 * epoch + 2]
    in_order = [stream.batch(step) for step in steps]
    fresh = BatchStream(digits, 100, data_seed=3, aug_seed=4, augment=True)
    for step, expected in reversed(list(zip(steps, in_order, strict=True))):
        batch = fresh.batch(step)
        np.testing.assert_array_equal(batch["image"], expected["image"])
        np.testing.assert_array_equal(batch["label"], expected["label"])


@pytest.mark.parametrize("drop_last", [True, False])
def test_each_epoch_is_a_permutation(digits, drop_last):
    stream = BatchStream(digits, 100, data_seed=0, aug_seed=0, augment=False, drop_last=drop_last)
    assert stream.steps_per_epoch == (14 if drop_last else 15)
    for epoch in (0, 1):
        steps = range(epoch * stream.steps_per_epoch, (epoch + 1) * stream.steps_per_epoch)
        seen = np.concatenate([stream.example_indices(step) for step in steps])
        assert len(seen) == (1400 if drop_last else 1497) and len(np.unique(seen)) == len(seen)
    assert not np.array_equal(stream.example_indices(0), stream.example_indices(15))
    step = stream.steps_per_epoch + 3
    batch = stream.batch(step)
    indices = stream.example_indices(step)
    np.testing.assert_array_equal(batch["label"], digits.train_labels[indices])
    expected = normalize(digits.train_images[indices], digits.mean, digits.std)
    np.testing.assert_array_equal(batch["image"], expected)


def test_crop_and_flip_matches_a_pixel_loop():
    images = np.random.default_rng(1).random((3, 5, 6, 2)).astype(np.float32)
    offsets = np.array([[0, 4], [2, 2], [4, 1]])
    flips = np.array([False, True, True])
    padding = 2
    result = crop_and_flip(images, offsets, flips, padding)
    expected = np.zeros_like(images)
    for n, ((top, left), flip) in enumerate(zip(offsets, flips, strict=True)):
        for row in range(5):
            for column in range(6):
                source_row, source_column = row + top - padding, column + left - padding
                if 0 <= source_row < 5 and 0 <= source_column < 6:
                    expected[n, row, column] = images[n, source_row, source_column]
        if flip:
            expected[n] = expected[n, :, ::-1]
    np.testing.assert_array_equal(result, expected)


def test_stream_augmentation_is_a_padded_crop_and_flip_before_normalisation():
    dataset = synthetic_dataset(distinct_images(32))
    stream = BatchStream(dataset, 8, data_seed=0, aug_seed=0, augment=True, crop_padding=4)
    # Every (offset, flip) a 4-pixel padding allows: 9 x 9 x 2 candidates; index 80 is the
    # identity (offset (4, 4), no flip), odd indices are flipped.
    rows, columns, flips = np.meshgrid(np.arange(9), np.arange(9), [False, True], indexing="ij")
    offsets, flips = np.stack([rows.ravel(), columns.ravel()], axis=1), flips.ravel()
    padded_value = (np.float32(0) - np.float32(dataset.mean)) / np.float32(dataset.std)
    batch = stream.batch(0)
    found = []
    for image, index in zip(batch["image"], batch["label"], strict=True):
        raw = to_unit_float(dataset.train_images[[index] * len(offsets)])
        candidates = normalize(crop_and_flip(raw, offsets, flips, 4), dataset.mean, dataset.std)
        (match,) = np.flatnonzero((candidates == image).all(axis=(1, 2, 3)))
        found.append(match)
        is_padding = (
            crop_and_flip(np.ones_like(raw[:1]), offsets[[match]], flips[[match]], 4)[0] == 0
        )
        np.testing.assert_array_equal(
            image[is_padding], np.broadcast_to(padded_value, image.shape)[is_padding]
        )
    assert any(match != 80 for match in found) and any(match % 2 for match in found)


def sorted_examples(batch) -> list[bytes]:
    """The batch as a multiset: one (image, label) byte string per example, sorted."""
    pairs = zip(batch["image"], batch["label"], strict=True)
    return sorted(image.tobytes() + label.tobytes() for image, label in pairs)


def test_permute_within_batch_keeps_the_examples_and_changes_their_order(digits):
    plain = BatchStream(digits, 64, data_seed=1, aug_seed=2, augment=True)
    permuted = BatchStream(digits, 64, data_seed=1, aug_seed=2, augment=True, reduction_order=9)
    for step in (0, 1, 30):
        batch, shuffled = plain.batch(step), permuted.batch(step)
        assert not np.array_equal(shuffled["label"], batch["label"])
        assert sorted_examples(shuffled) == sorted_examples(batch)
        np.testing.assert_array_equal(
            np.sort(permuted.example_indices(step)), np.sort(plain.example_indices(step))
        )


def test_eval_batches_cover_the_split_in_order(digits):
    batches = list(eval_batches(digits, "test", batch_size=128))
    assert [len(batch["label"]) for batch in batches] == [128, 128, 44]
    np.testing.assert_array_equal(
        np.concatenate([batch["label"] for batch in batches]), digits.test_labels
    )
    np.testing.assert_array_equal(
        np.concatenate([batch["image"] for batch in batches]),
        normalize(digits.test_images, digits.mean, digits.std),
    )
    assert sum(len(b["label"]) for b in eval_batches(digits, "train")) == digits.num_train


def test_full_batch_gradient_descent_sums_in_one_fixed_order(digits):
    """batch = training set: every step is an epoch. 'auto' keeps epoch 0's order, so the
    gradient is summed identically each step; 'reshuffle' would reorder it every step."""
    from eos_jax import recipe
    from eos_jax.training import build

    config = recipe.default_recipe()
    config.batch_size = digits.num_train
    fixed = build.stream(config, digits)
    assert fixed.steps_per_epoch == 1
    for step in (1, 2, 7):
        np.testing.assert_array_equal(fixed.batch(step)["image"], fixed.batch(0)["image"])
    config.data_order = "reshuffle"
    reshuffled = build.stream(config, digits)
    assert not np.array_equal(reshuffled.example_indices(1), reshuffled.example_indices(0))
    np.testing.assert_array_equal(
        np.sort(reshuffled.example_indices(1)), np.arange(digits.num_train)
    )


def test_the_paper_recipe_keeps_the_last_partial_batch(digits):
    """The authors' DataLoader keeps the last, smaller batch (391 CIFAR-10 steps an epoch)."""
    from eos_jax import recipe
    from eos_jax.training import build
    from experiments.configs import resnet56_cifar10

    paper = resnet56_cifar10.get_config()
    assert paper.drop_last_batch is False
    stream = build.stream(paper, digits)  # 1,497 images, batch 128: 11 full + 89
    assert stream.steps_per_epoch == 12 and len(stream.batch(11)["label"]) == 1497 - 11 * 128
    assert build.stream(recipe.default_recipe(), digits).steps_per_epoch == 11
