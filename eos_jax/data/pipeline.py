"""Deterministic, random-access batches in pure NumPy.

`BatchStream.batch(step)` is a function of the step alone: training can resume at any step,
and lockstep twins given the same stream see bit-identical batches. Three separate seeds
decide what a step sees, so each source of randomness can be switched on by itself:

- `data_seed`: the order of examples; epoch e is the permutation drawn by
  `np.random.default_rng((data_seed, e))`.
- `aug_seed`: the augmentation of step s (`augment_batch`: crop offsets and flips of images,
  shifts of signals), drawn by `np.random.default_rng((aug_seed, s))`.
- `reduction_order`: if set (a seed), the examples of step s are shuffled inside the batch
  by `np.random.default_rng((reduction_order, s))`: the same examples, hence the same
  gradient in exact arithmetic, summed in a different floating-point order.

With `reshuffle=False` every epoch uses epoch 0's order: full-batch gradient descent then
sums the examples in one fixed order every step.

No JAX here, so the bits of every batch are the same on every platform.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from eos_jax.data.datasets import Dataset

DEFAULT_CROP_PADDING = 4  # the paper's RandomCrop(32, padding=4)


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """float32 images in [0, 1]; uint8 is divided by 255 as torchvision's ToTensor does."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255)
    return images.astype(np.float32, copy=False)


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """(x - mean) / std per channel, in float32, as torchvision's Normalize computes it."""
    return (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def crop_and_flip(
    images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, padding: int
) -> np.ndarray:
    """Zero-pads NHWC images by `padding`, crops back to size, mirrors left-right where asked.

    offsets: (N, 2) int top-left corners (row, column) in the padded image, each in
    [0, 2 * padding]; flips: (N,) bool. One gather for the whole batch.
    """
    n, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = offsets[:, :1] + np.arange(height)
    columns = offsets[:, 1:] + np.arange(width)
    columns = np.where(flips[:, None], columns[:, ::-1], columns)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], columns[:, None, :]]


def draw_crop_and_flip(
    rng: np.random.Generator, batch_size: int, padding: int
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform crop offsets in [0, 2 * padding] and fair-coin flips for a batch."""
    offsets = rng.integers(0, 2 * padding + 1, size=(batch_size, 2))
    flips = rng.random(batch_size) < 0.5
    return offsets, flips


def shift(signals: np.ndarray, offsets: np.ndarray, padding: int) -> np.ndarray:
    """Zero-pads NLC signals by `padding` at both ends of the length axis and crops a window
    of the original length starting at `offsets` (N,) in [0, 2 * padding]: the signal moves
    by padding - offset samples, the vacated end filled with zeros. One gather for the batch.
    """
    n, length, _ = signals.shape
    padded = np.pad(signals, ((0, 0), (padding, padding), (0, 0)))
    return padded[np.arange(n)[:, None], offsets[:, None] + np.arange(length)]


def draw_shift(rng: np.random.Generator, batch_size: int, padding: int) -> np.ndarray:
    """Uniform window starts in [0, 2 * padding] for a batch of signals."""
    return rng.integers(0, 2 * padding + 1, size=batch_size)


def augment_batch(images: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
    """The stream's augmentation of one batch (before normalisation), chosen by its rank.

    - NHWC images: the paper's PyTorch RandomCrop(32, padding) + RandomHorizontalFlip
      (`crop_and_flip`).
    - NLC signals (MNIST-1D): the same random crop along the one spatial axis, i.e. a random
      shift by up to `padding` samples with zeros shifted in (`shift`), and no flip. Greydanus
      (2020) builds every MNIST-1D signal from a template by padding, a random translation,
      scaling, shearing and added noise; translation is the transform a classifier must be
      invariant to and the one a crop reproduces, so the shift is the natural augmentation.
      A mirror image is not: reversing a signal changes its digit (templates are not
      symmetric), just as flipping a handwritten digit would. The generator standardises
      its signals to mean 0, so the zeros shifted in are the data's mean level.
    """
    if images.ndim == 4:
        offsets, flips = draw_crop_and_flip(rng, len(images), padding)
        return crop_and_flip(images, offsets, flips, padding)
    if images.ndim == 3:
        return shift(images, draw_shift(rng, len(images), padding), padding)
    raise ValueError(
        f"augmentation needs NHWC images or NLC signals, got a batch of shape {images.shape}"
    )


class BatchStream:
    """Training batches of a dataset, indexed by the global step (see the module docstring).

    With `drop_last` an epoch has floor(N / batch_size) full batches and the remainder of
    its permutation is skipped; without it the last batch of an epoch is smaller.
    Augmentation is the paper's (PyTorch RandomCrop(padding) + RandomHorizontalFlip) for
    images and a random shift for 1-D signals (`augment_batch`), applied to the [0, 1] image
    before normalisation, so padded pixels become -mean/std (0 for MNIST-1D). `crop_padding`
    is the paper's 4 pixels of a 32-pixel image; on MNIST-1D's 40 samples the same 4 is a
    shift of up to 10% of the signal (the recipe's config.augment_padding sets it).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        data_seed: int,
        aug_seed: int,
        augment: bool,
        drop_last: bool = True,
        crop_padding: int = DEFAULT_CROP_PADDING,
        reshuffle: bool = True,
        reduction_order: int | None = None,
    ):
        if not 1 <= batch_size <= dataset.num_train:
            raise ValueError(f"batch_size={batch_size} not in [1, {dataset.num_train}]")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding={crop_padding!r} must be an integer >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.data_seed = data_seed
        self.aug_seed = aug_seed
        self.augment = augment
        self.drop_last = drop_last
        self.crop_padding = crop_padding
        self.reshuffle = reshuffle
        self.reduction_order = reduction_order
        num_batches, remainder = divmod(dataset.num_train, batch_size)
        self.steps_per_epoch = num_batches + (0 if drop_last or not remainder else 1)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of training examples used in `epoch` (epoch 0's without reshuffle)."""
        epoch = epoch if self.reshuffle else 0
        return np.random.default_rng((self.data_seed, epoch)).permutation(self.dataset.num_train)

    def example_indices(self, step: int) -> np.ndarray:
        """Training-set indices of the examples of `step`, in the order the batch holds them."""
        indices = self._drawn_indices(step)
        return indices[self._within_batch_order(step, len(indices))]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """{'image': float32 NHWC normalised, 'label': int32} of the global step `step`."""
        indices = self._drawn_indices(step)
        images = to_unit_float(self.dataset.train_images[indices])
        if self.augment:
            rng = np.random.default_rng((self.aug_seed, step))
            images = augment_batch(images, rng, self.crop_padding)
        # Shuffled after augmentation, so every example keeps its crop and flip.
        order = self._within_batch_order(step, len(indices))
        return {
            "image": normalize(images[order], self.dataset.mean, self.dataset.std),
            "label": self.dataset.train_labels[indices[order]],
        }

    def _drawn_indices(self, step: int) -> np.ndarray:
        """The slice of the epoch's order that `step` takes, before any within-batch shuffle."""
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.batch_size
        return self.epoch_order(epoch)[start : start + self.batch_size]

    def _within_batch_order(self, step: int, size: int) -> np.ndarray:
        if self.reduction_order is None:
            return np.arange(size)
        return np.random.default_rng((self.reduction_order, step)).permutation(size)


def eval_batches(
    dataset: Dataset, split: str = "test", batch_size: int = 256
) -> Iterator[dict[str, np.ndarray]]:
    """The whole split in stored order, normalised and unaugmented; the last batch may be short."""
    images, labels = dataset.split(split)
    for start in range(0, len(labels), batch_size):
        yield {
            "image": normalize(
                to_unit_float(images[start : start + batch_size]), dataset.mean, dataset.std
            ),
            "label": labels[start : start + batch_size],
        }
