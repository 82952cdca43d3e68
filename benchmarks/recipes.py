"""The recipes that benchmarks time, by name (shapes matter for time, not the data)."""

import numpy as np

from eos_jax.data import Dataset, load_dataset
from eos_jax.training import recipe
from experiments.configs import twins_embedded, twins_mnist1d

NAMES = ("embedded", "mnist1d", "resnet20")


def benchmark_recipe(name: str):
    """(config, dataset) of a benchmark recipe."""
    if name == "mnist1d":
        config = twins_mnist1d.get_config()
        return config, recipe.dataset(config)
    config = twins_embedded.get_config()
    if name == "embedded":
        return config, load_dataset("digits")
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    labels = lambda n: rng.integers(0, 10, n).astype(np.int32)  # noqa: E731
    dataset = Dataset(
        images(1024),
        labels(1024),
        images(256),
        labels(256),
        10,
        "random32",
        (0.5,) * 3,
        (0.25,) * 3,
    )
    config.model, config.model_kwargs = "resnet20", {}
    return config, dataset
