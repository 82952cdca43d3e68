"""Augmentation of 1-D signals: a random shift (zero padding + crop) drawn from aug_seed, a
pure function of (seed, step), shared by lockstep twins; and a short augmented MNIST-1D run
that also evaluates the held-out split."""

import numpy as np
import pytest

from eos_jax import recipe
from eos_jax.data import BatchStream, Dataset, augment_batch, shift
from eos_jax.training import build, ensemble, sources

LENGTH, CHANNELS, PADDING = 12, 2, 3
# Every window start a 3-sample padding allows: 0 .. 6; 3 is the identity.
STARTS = np.arange(2 * PADDING + 1)


def signals_dataset(signals: np.ndarray) -> Dataset:
    """NLC signals already standardised (mean 0, std 1, as MNIST-1D); labels = indices."""
    labels = np.arange(len(signals), dtype=np.int32)
    return Dataset(signals, labels, signals[:4], labels[:4], len(labels), "signals", (0.0,), (1.0,))


def distinct_signals(count: int) -> np.ndarray:
    """float32 signals with no zero sample, so zeros in a batch are padding."""
    values = np.random.default_rng(0).uniform(0.5, 2.0, size=(count, LENGTH, CHANNELS))
    return values.astype(np.float32)


def test_shift_matches_a_sample_loop():
    signals = distinct_signals(4)
    offsets = np.array([0, 6, 3, 1])
    result = shift(signals, offsets, PADDING)
    expected = np.zeros_like(signals)
    for n, start in enumerate(offsets):
        for position in range(LENGTH):
            source = position + start - PADDING
            if 0 <= source < LENGTH:
                expected[n, position] = signals[n, source]
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(result[2], signals[2])  # start = padding: unchanged
    assert not result[0, :PADDING].any() and not result[1, -PADDING:].any()


def test_rank_chooses_the_augmentation():
    rng = lambda: np.random.default_rng((1, 0))  # noqa: E731
    signals = distinct_signals(5)
    assert augment_batch(signals, rng(), PADDING).shape == signals.shape
    images = np.ones((5, 6, 6, 1), np.float32)
    assert augment_batch(images, rng(), PADDING).shape == images.shape
    with pytest.raises(ValueError, match=r"NHWC images or NLC signals.*\(5, 12\)"):
        augment_batch(signals[..., 0], rng(), PADDING)


def recovered_starts(stream: BatchStream, step: int) -> np.ndarray:
    """The window start of every example of a batch, found among all candidates (each one
    unique: the signals have no zero sample), checking the padding is exactly zero."""
    batch = stream.batch(step)
    starts = []
    for signal, index in zip(batch["image"], batch["label"], strict=True):
        source = stream.dataset.train_images[[index] * len(STARTS)]
        candidates = shift(source, STARTS, PADDING)
        (match,) = np.flatnonzero((candidates == signal).all(axis=(1, 2)))
        offset = PADDING - match  # samples moved right; zeros fill the vacated end
        zeros = slice(0, offset) if offset > 0 else slice(LENGTH + offset, LENGTH)
        assert np.count_nonzero(signal == 0) == abs(offset) * CHANNELS
        assert not signal[zeros].any()
        starts.append(match)
    return np.array(starts)


def test_stream_shifts_signals_as_a_pure_function_of_seed_and_step():
    dataset = signals_dataset(distinct_signals(64))
    make = lambda aug_seed=1, data_seed=1: BatchStream(  # noqa: E731
        dataset, 16, data_seed=data_seed, aug_seed=aug_seed, augment=True, crop_padding=PADDING
    )
    stream = make()
    batch = stream.batch(2)
    assert batch["image"].shape == (16, LENGTH, CHANNELS) and batch["image"].dtype == np.float32
    starts = {step: recovered_starts(stream, step) for step in (0, 1, 2, 9)}
    assert len(set(np.concatenate(list(starts.values())))) == len(STARTS)  # all 7 occur
    assert not np.array_equal(starts[0], starts[1])  # each step draws anew
    # Random access and a fresh stream: the same bits (resume is bit-exact).
    fresh = make()
    for step in (9, 2, 0):
        np.testing.assert_array_equal(fresh.batch(step)["image"], stream.batch(step)["image"])
    # The shifts are drawn by (aug_seed, step) alone: another order of examples keeps them,
    # another aug_seed changes them.
    np.testing.assert_array_equal(recovered_starts(make(data_seed=5), 1), starts[1])
    assert not np.array_equal(recovered_starts(make(aug_seed=2), 1), starts[1])


def test_recipe_padding_reaches_the_stream_and_is_validated():
    config = recipe.default_recipe()
    dataset = signals_dataset(distinct_signals(64))
    config.batch_size = 16
    assert build.stream(config, dataset).crop_padding == 4  # None: the paper's 4
    config.augment_padding = PADDING
    assert build.stream(config, dataset).crop_padding == PADDING
    config.augment_padding = -1
    with pytest.raises(ValueError, match=r"config.augment_padding=-1 must be an integer >= 0"):
        recipe.validate(config)


def test_augmented_mnist1d_twins_share_their_shifts_and_train(tmp_path):
    """update_k twins with augment=True: one stream (the same shifted batches), a couple of
    steps of training; an aug_seed member draws other shifts; the held-out split evaluates."""
    config = recipe.default_recipe()
    config.dataset, config.model = "mnist1d", "cnn1d"
    config.dataset_kwargs = {"num_samples": 200, "heldout_size": 100}
    config.data_dir = str(tmp_path)
    config.model_kwargs = {"widths": (8, 8)}
    config.augment, config.batch_size, config.num_steps, config.quiet = True, 32, 2, True
    dataset = build.dataset(config)
    twins = sources.make_members(config, "update_k", (1, 3))
    ens = ensemble.Ensemble(twins, dataset, "unrolled")
    assert ens.stream_of == [0, 0]  # both members take the one stream's batches
    other = sources.make_members(config, "aug_seed", (1, 2))
    other_streams = [build.stream(m.config, dataset) for m in other]
    first = other_streams[0].batch(0)
    np.testing.assert_array_equal(first["image"], ens.streams[0].batch(0)["image"])
    np.testing.assert_array_equal(first["label"], other_streams[1].batch(0)["label"])
    assert not np.array_equal(first["image"], other_streams[1].batch(0)["image"])
    config.augment = False
    unaugmented = build.stream(config, dataset).batch(0)
    np.testing.assert_array_equal(first["label"], unaugmented["label"])
    assert not np.array_equal(first["image"], unaugmented["image"])

    states = ens.init()
    for step in range(2):
        states, metrics = ens.step(states, ens.batches(step))
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    logits = ens.logits(states, split="heldout")
    assert [member.shape for member in logits] == [(100, 10), (100, 10)]
