"""Bit tools: exact ulp steps in every float dtype, ulp distances, hashes, diff statistics."""

import ml_dtypes
import numpy as np
import pytest

from eos_jax import bits

FLOATS = [np.float32, np.float64, ml_dtypes.bfloat16]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 3, -2])
def test_ulp_step_moves_exactly_n_representable_values(dtype, n):
    x = np.array([0.75, -1.5, 3.0], dtype=dtype)
    y = bits.ulp_step(x, (1,), n)
    expected = x[1]
    for _ in range(abs(n)):
        expected = np.nextafter(expected, np.array(np.inf if n > 0 else -np.inf, dtype))
    assert y[1] == expected and y[1] != x[1]
    assert bits.ulp_distance(x, y).tolist() == [0, abs(n), 0]
    assert x[1] == dtype(-1.5)  # the input is not modified


@pytest.mark.parametrize("dtype", FLOATS)
def test_ulp_step_refuses_zero_and_subnormal_targets(dtype):
    subnormal = ml_dtypes.finfo(dtype).smallest_subnormal
    x = np.array([0.0, subnormal, 1.0], dtype=dtype)
    for index in [(0,), (1,)]:
        with pytest.raises(ValueError, match="subnormal"):
            bits.ulp_step(x, index)


def test_ulp_distance_counts_across_zero():
    tiny = np.finfo(np.float32).smallest_subnormal
    a = np.array([-tiny, -0.0, 1.0], np.float32)
    b = np.array([tiny, 0.0, 2.0], np.float32)
    # -tiny .. +tiny: -tiny, 0, +tiny (signed zeros are the same value); 1 -> 2 is 2**23 steps.
    assert bits.ulp_distance(a, b).tolist() == [2, 0, 2**23]
    assert bits.ulp_distance(np.array([-1.0]), np.array([1.0]))[0] == 2 * 0x3FF0000000000000


def test_flip_last_mantissa_bit_is_one_ulp_for_positive_values():
    x = np.array([1.25, 3.5], np.float32)
    y = bits.flip_bit(x, (0,), 0)
    assert bits.ulp_distance(x, y).tolist() == [1, 0]
    assert bits.flip_bit(x, (1,), 31)[1] == -3.5  # the sign bit
    with pytest.raises(ValueError, match="bit=32"):
        bits.flip_bit(x, (0,), 32)


def test_tree_hash_sees_one_ulp_and_dtype():
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3) + 1, "b": {"c": np.ones(2)}}
    h = bits.tree_hash(tree)
    assert h == bits.tree_hash({"a": tree["a"].copy(), "b": {"c": np.ones(2)}})
    bumped = {"a": bits.ulp_step(tree["a"], (1, 2)), "b": tree["b"]}
    assert bits.tree_hash(bumped) != h
    assert bits.tree_hash({"a": tree["a"], "b": {"c": np.ones(2, np.float32)}}) != h


def test_first_normal_index_skips_zeros_and_subnormals():
    x = np.array([[0.0, np.finfo(np.float32).smallest_subnormal], [2.0, 3.0]], np.float32)
    assert bits.first_normal_index(x) == (1, 0)


def test_diff_stats_on_known_arrays():
    a = np.array([1.0, 2.0, -1.0, 0.0], np.float32)
    b = np.array([1.0, 3.0, 1.0, 0.0], np.float32)
    s = bits.diff_stats(a, b)
    assert s["max_abs"] == 2.0 and s["mean_abs"] == 0.75 and s["frac_differ"] == 0.5
    # rel: 0, 1/5, 2/2, 0 (0/0 counted as 0) -> paper's D = 2 * mean = 0.6
    assert s["rel_l1"] == pytest.approx(0.6) and s["max_rel"] == 1.0
    assert s["l2"] == pytest.approx(np.sqrt(5.0))
    total = bits.tree_diff({"x": a, "y": a}, {"x": b, "y": a})
    assert total["y"]["max_abs"] == 0.0 and total["total"]["frac_differ"] == 0.25


def test_non_finite_entries_count_as_fully_different():
    a = np.array([1.0, np.nan, np.inf, 2.0], np.float32)
    b = np.array([1.0, np.nan, np.inf, np.nan], np.float32)
    s = bits.diff_stats(a, b)
    # NaN vs NaN and 2 vs NaN are different (no information is not "equal"); inf == inf is not.
    assert s["frac_differ"] == 0.5 and s["max_rel"] == 1.0 and s["rel_l1"] == 1.0
    assert s["max_ulp"] == np.inf and s["max_abs"] == np.inf
    with pytest.raises(ValueError, match="NaN"):
        bits.ulp_distance(a, b)
    assert bits.tree_all_finite({"x": a[:1]}) and not bits.tree_all_finite({"x": a})
