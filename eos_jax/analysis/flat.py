"""One flat-vector view of a pytree's floating leaves: parameters, or a whole training state.

Eigensolvers and tangent propagation work on plain vectors; `StateSpace.of(tree)` says how
the floating leaves of `tree` (in tree order) map to one vector, and back. Integer and bool
leaves (step counters, the perturbation k) have no place in the vector; going back, they get
float0 zeros, which is what `jax.jvp` demands as their tangents. The flat dtype is the
promotion of the floating leaves' dtypes (float64 if any leaf is float64). A StateSpace is
hashable, so jitted functions take it as a static argument and compile once per layout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eos_jax import bits


@dataclasses.dataclass(frozen=True)
class StateSpace:
    """The floating leaves of a pytree as one flat vector (see the module docstring)."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    is_float: tuple[bool, ...]
    paths: tuple[str, ...]

    @classmethod
    def of(cls, tree) -> StateSpace:
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
        leaves = [leaf for _, leaf in with_paths]
        return cls(
            treedef,
            tuple(tuple(np.shape(x)) for x in leaves),
            tuple(jnp.result_type(x) for x in leaves),
            tuple(bits.is_float(x) for x in leaves),
            tuple(jax.tree_util.keystr(p) for p, _ in with_paths),
        )

    @property
    def dtype(self):
        floats = [d for d, f in zip(self.dtypes, self.is_float, strict=True) if f]
        return jnp.result_type(*floats) if floats else jnp.dtype(jnp.float32)

    @property
    def dim(self) -> int:
        return int(sum(math.prod(s) for s, f in zip(self.shapes, self.is_float, strict=True) if f))

    def float_slices(self) -> dict[str, slice]:
        """Where each floating leaf sits in the flat vector, by path."""
        out, start = {}, 0
        for path, shape, f in zip(self.paths, self.shapes, self.is_float, strict=True):
            if f:
                size = math.prod(shape)
                out[path] = slice(start, start + size)
                start += size
        return out

    def flatten(self, tree) -> jax.Array:
        """The floating leaves of `tree` (this layout) concatenated, in the flat dtype."""
        leaves = jax.tree.leaves(tree)
        parts = [
            jnp.ravel(x).astype(self.dtype) for x, f in zip(leaves, self.is_float, strict=True) if f
        ]
        return jnp.concatenate(parts) if parts else jnp.zeros((0,), self.dtype)

    def unflatten(self, flat: jax.Array):
        """The pytree of this layout from a flat vector: each floating leaf in its own dtype,
        float0 zeros for integer leaves (a tangent, for jax.jvp)."""
        leaves, start = [], 0
        for shape, dtype, f in zip(self.shapes, self.dtypes, self.is_float, strict=True):
            if f:
                size = math.prod(shape)
                leaves.append(flat[start : start + size].reshape(shape).astype(dtype))
                start += size
            else:
                leaves.append(np.zeros(shape, jax.dtypes.float0))
        return jax.tree.unflatten(self.treedef, leaves)
