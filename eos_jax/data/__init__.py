"""Data layer: datasets as host NumPy arrays and deterministic, random-access batch streams."""

from eos_jax.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    KNOWN_NAMES,
    Dataset,
    DatasetNotPreparedError,
    channel_mean_std,
    load_dataset,
    prepare_command,
    subset_indices,
)
from eos_jax.data.mnist1d import DatasetCacheError, default_cache_dir, load_mnist1d
from eos_jax.data.pipeline import (
    BatchStream,
    augment_batch,
    crop_and_flip,
    draw_crop_and_flip,
    draw_shift,
    eval_batches,
    normalize,
    shift,
    to_unit_float,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "KNOWN_NAMES",
    "BatchStream",
    "Dataset",
    "DatasetCacheError",
    "DatasetNotPreparedError",
    "augment_batch",
    "channel_mean_std",
    "crop_and_flip",
    "default_cache_dir",
    "draw_crop_and_flip",
    "draw_shift",
    "eval_batches",
    "load_dataset",
    "load_mnist1d",
    "normalize",
    "prepare_command",
    "shift",
    "subset_indices",
    "to_unit_float",
]
