"""Bit-level tools for pytrees: hashes, exact ulp steps, ulp distances, difference stats.

All functions work on host copies (NumPy) so that they never change what a jitted program
computes; bf16 goes through ml_dtypes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

_INT_OF_FLOAT = {2: np.int16, 4: np.int32, 8: np.int64}


def path_name(path) -> str:
    """'params/conv1/kernel' for a jax tree path."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def named_leaves(tree) -> dict[str, np.ndarray]:
    """Flattens a pytree to {path name: host array}, in a stable (sorted-key) order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(p): np.asarray(x) for p, x in leaves}


def tree_hash(tree) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes: equal iff bit-identical."""
    h = hashlib.sha256()
    for name, x in named_leaves(tree).items():
        h.update(f"{name}:{x.dtype.str}:{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def tree_all_finite(tree) -> bool:
    """True iff no leaf of the pytree holds a NaN or an infinity."""
    return all(np.all(np.isfinite(x)) for x in named_leaves(tree).values() if is_float(x))


def is_float(x) -> bool:
    """Whether an array (NumPy or JAX, traced too) holds floating-point numbers, bfloat16
    included: the leaves that have ulps, a place in a flat vector and a tangent."""
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.floating))


def _ordered_int(x: np.ndarray) -> np.ndarray:
    """Maps floats to integers of the same width, monotone in value (+0 and -0 both map to 0)."""
    ints = x.view(_INT_OF_FLOAT[x.dtype.itemsize])
    int_min = np.iinfo(ints.dtype).min
    # Negative floats are sign-magnitude: reflect them so the order is monotone.
    return np.where(ints < 0, int_min - ints, ints).astype(ints.dtype)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of representable floats between a and b, entry by entry (0 iff same value)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or not is_float(a):
        raise ValueError(
            f"ulp_distance needs two arrays of one float dtype, got {a.dtype}, {b.dtype}"
        )
    if np.isnan(a.astype(np.float64)).any() or np.isnan(b.astype(np.float64)).any():
        raise ValueError("ulp_distance is undefined for NaN entries")
    ia, ib = _ordered_int(a), _ordered_int(b)
    hi, lo = np.maximum(ia, ib), np.minimum(ia, ib)
    # Unsigned wrap-around gives the exact difference even where it exceeds the signed range.
    return hi.astype(np.uint64) - lo.astype(np.uint64)


def ulp_step(x: np.ndarray, index: tuple[int, ...], n: int = 1) -> np.ndarray:
    """Returns a copy of x with x[index] moved by n ulps (n < 0 moves towards -inf).

    Refuses zero and subnormal targets: XLA flushes subnormals to zero, so such a step would
    silently not change the computation.
    """
    x = np.array(x, copy=True)
    if not is_float(x):
        raise ValueError(f"ulp_step needs a float array, got {x.dtype}")
    value = x[index]
    smallest_normal = ml_dtypes.finfo(x.dtype).smallest_normal
    if not np.isfinite(value) or abs(float(value)) < float(smallest_normal):
        raise ValueError(
            f"entry {index} = {value!r} is zero, subnormal or not finite; pick a normal nonzero "
            "entry (XLA flushes subnormals to zero, so the step would be lost)"
        )
    direction = np.array(np.inf if n > 0 else -np.inf, dtype=x.dtype)
    for _ in range(abs(n)):
        value = np.nextafter(value, direction)
    x[index] = value
    return x


def flip_bit(x: np.ndarray, index: tuple[int, ...], bit: int) -> np.ndarray:
    """Returns a copy of x with one bit of x[index] flipped (bit 0 = last mantissa bit)."""
    x = np.array(x, copy=True)
    nbits = 8 * x.dtype.itemsize
    if not 0 <= bit < nbits:
        raise ValueError(f"bit={bit} not in [0, {nbits}) for {x.dtype}")
    ints = x.view(_INT_OF_FLOAT[x.dtype.itemsize])
    ints[index] ^= np.array(1, dtype=ints.dtype) << np.array(bit, dtype=ints.dtype)
    return x


def first_normal_index(x: np.ndarray) -> tuple[int, ...]:
    """Index of the first entry (C order) that is finite, nonzero and not subnormal."""
    x = np.asarray(x)
    ok = np.isfinite(x.astype(np.float64)) & (
        np.abs(x.astype(np.float64)) >= float(ml_dtypes.finfo(x.dtype).smallest_normal)
    )
    flat = np.flatnonzero(ok)
    if flat.size == 0:
        raise ValueError("no normal nonzero entry to perturb")
    return tuple(int(i) for i in np.unravel_index(flat[0], x.shape))


def relative_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Entrywise |a - b| / (|a| + |b|) (0 where both are 0): the terms of the paper's
    relative-L1 distance D = 2 mean(...) (diff_stats' rel_l1). An entry where either side is
    NaN or infinite (and the two are not equal) counts as fully different, 1; equal
    infinities are no difference."""
    finite = np.isfinite(a) & np.isfinite(b)
    broken = ~finite & ~(a == b)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(a - b), 0.0)
        denom = np.abs(a) + np.abs(b)
        rel = np.divide(diff, denom, out=np.zeros_like(diff), where=finite & (denom > 0))
    return np.where(broken, 1.0, rel)


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """How two arrays of the same shape differ: ulps, absolute, relative, paper's rel-L1.

    An entry where either side is NaN or infinite (and the two are not equal) counts as
    fully different: relative difference 1, absolute difference and ulps infinite; a
    blown-up twin never reads as "close".
    """
    a, b = np.asarray(a), np.asarray(b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    broken = ~finite & ~(a64 == b64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(a64 - b64), np.where(broken, np.inf, 0.0))
    rel = relative_differences(a64, b64)
    if broken.any():
        max_ulp = np.inf
    elif is_float(a):
        max_ulp = float(np.max(ulp_distance(a[finite], b[finite]), initial=0))
    else:
        max_ulp = float(np.max(diff, initial=0))
    return {
        "max_ulp": float(max_ulp),
        "max_abs": float(np.max(diff, initial=0)),
        "mean_abs": float(np.mean(diff)) if diff.size else 0.0,
        "max_rel": float(np.max(rel, initial=0)),
        "rel_l1": float(2 * np.mean(rel)) if rel.size else 0.0,
        "l2": float(np.sqrt(np.sum(diff**2))),
        "frac_differ": float(np.mean(diff > 0)) if diff.size else 0.0,
    }


def tree_diff(a: Any, b: Any) -> dict[str, dict[str, float]]:
    """diff_stats per leaf of two pytrees of the same structure, plus a 'total' entry."""
    la, lb = named_leaves(a), named_leaves(b)
    if la.keys() != lb.keys():
        raise ValueError("tree_diff needs two pytrees with the same structure")
    out = {k: diff_stats(la[k], lb[k]) for k in la}
    flat_a = np.concatenate([v.astype(np.float64).ravel() for v in la.values()])
    flat_b = np.concatenate([v.astype(np.float64).ravel() for v in lb.values()])
    total = diff_stats(flat_a, flat_b)
    total["max_ulp"] = max((v["max_ulp"] for v in out.values()), default=0.0)
    out["total"] = total
    return out
