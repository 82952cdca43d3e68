"""What several benchmarks share: the recipes they time, by name (shapes matter for time,
not the data), and how an ensemble's step is timed."""

import time

import jax
import numpy as np

from eos_jax.data import Dataset, load_dataset
from eos_jax.training import build
from experiments.configs import twins_embedded, twins_mnist1d, twins_mnist1d_resnet

NAMES = ("embedded", "mnist1d", "resnet20", "mnist1d_resnet")


def benchmark_recipe(name: str):
    """(config, dataset) of a benchmark recipe."""
    if name in ("mnist1d", "mnist1d_resnet"):
        module = twins_mnist1d if name == "mnist1d" else twins_mnist1d_resnet
        config = module.get_config()
        return config, build.dataset(config)
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


def time_heldout(ens, state, batch_size: int) -> float:
    """Seconds for every member's logits on the whole held-out split, after a warm-up call."""
    ens.logits(state, batch_size, split="heldout")
    t0 = time.perf_counter()
    ens.logits(state, batch_size, split="heldout")
    return time.perf_counter() - t0


def time_steps(ens, steps: int):
    """(mean seconds per step of `ens` over `steps` steps after 2 warm-up (compiling) steps,
    the state after them); the batches are those of steps 0, 1, ..., steps + 1."""
    state = ens.init()
    for s in range(2):
        state, metrics = ens.step(state, ens.batches(s))
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for s in range(2, 2 + steps):
        state, metrics = ens.step(state, ens.batches(s))
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t0) / steps, state
