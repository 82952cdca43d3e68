"""Named sources of difference between lockstep members: each changes exactly one thing.

A source turns one recipe (an ml_collections config) and a list of values into members;
member 0 is the reference. With the default values (default_values) member 0 is the recipe
itself for every source but `dtype` (whose reference is fp64).

    source            value of a member                    what differs
    none              ignored                              nothing (the control)
    update_k          k >= 1                               w <- w - (lr*k)*(d/k)
    ulp_init          n (ulps; 0 = unchanged)              one entry of one initial tensor
    bitflip_init      mantissa bit (-1 = unchanged)        one entry of one initial tensor
    reduction_order   seed (-1 = stored order)             order of examples inside each batch
    dtype             'bf16' | 'fp32' | 'fp64'             arithmetic precision
    init_seed         seed                                 initial weights
    data_seed         seed                                 order of examples
    aug_seed          seed                                 crops and flips
    seed              seed                                 all three seeds (the paper's "seed")

The first five are rounding-induced (the same computation in exact arithmetic, except the
init edits, which are one rounding of the weights); the last four are stochastic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_dtypes
import numpy as np

from eos_jax import bits, numerics

ROUNDING_SOURCES = ("none", "update_k", "ulp_init", "bitflip_init", "reduction_order", "dtype")
STOCHASTIC_SOURCES = ("init_seed", "data_seed", "aug_seed", "seed")
SOURCES = ROUNDING_SOURCES + STOCHASTIC_SOURCES
UNCHANGED = -1  # the value of bitflip_init / reduction_order that leaves the recipe alone
EDIT_KINDS = ("ulp", "bit")
_SEED_KEYS = {
    "init_seed": ("init",),
    "data_seed": ("data",),
    "aug_seed": ("aug",),
    "seed": ("init", "data", "aug"),
}


@dataclasses.dataclass(frozen=True)
class InitEdit:
    """Moves one entry of one initial tensor: by `amount` ulps ('ulp') or flipping bit `amount`
    ('bit'). `index` () means the first normal nonzero entry (bits.first_normal_index)."""

    kind: str
    tensor: str
    index: tuple[int, ...]
    amount: int

    def __post_init__(self):
        if self.kind not in EDIT_KINDS:
            raise ValueError(
                f"unknown init edit kind {self.kind!r}; allowed: {', '.join(EDIT_KINDS)}"
            )
        if not all(_is_int(i) for i in self.index):
            raise ValueError(
                f"init edit index {self.index!r} must be integers (or () = first "
                "normal nonzero entry)"
            )

    def resolve(self, params) -> tuple[str, tuple[int, ...]]:
        """(tensor path, entry index) this edit changes in `params`; bad input: ValueError."""
        leaves = bits.named_leaves(params)
        if self.tensor not in leaves:
            raise ValueError(f"no tensor {self.tensor!r} in params; known: {', '.join(leaves)}")
        x = leaves[self.tensor]
        index = tuple(self.index) or bits.first_normal_index(x)
        if len(index) != x.ndim or not all(0 <= i < n for i, n in zip(index, x.shape, strict=True)):
            raise ValueError(f"index {index} out of range for {self.tensor} of shape {x.shape}")
        bits.ulp_step(x, index, 0)  # n = 0 changes nothing; it refuses zero/subnormal entries
        return self.tensor, index

    def apply(self, params):
        """Returns params with the edit applied (a new pytree; params is not modified)."""
        tensor, index = self.resolve(params)

        def edit(path, x):
            if bits.path_name(path) != tensor:
                return x
            x = np.asarray(x)
            changed = (
                bits.ulp_step(x, index, self.amount)
                if self.kind == "ulp"
                else bits.flip_bit(x, index, self.amount)
            )
            return jax.numpy.asarray(changed)

        return jax.tree_util.tree_map_with_path(edit, params)


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a lockstep ensemble: its own recipe, plus what the recipe cannot say."""

    label: str
    config: Any  # ml_collections.ConfigDict: seeds, optimizer.k and numerics may differ
    init_edit: InitEdit | None = None
    permute_seed: int | None = None  # BatchStream's permute_within_batch_seed


def default_values(source: str, count: int, config) -> tuple:
    """The values of `count` members when a config gives none (dtype: always 3 members);
    member 0's value leaves the recipe unchanged (dtype: fp64 is the reference)."""
    check_source(source)
    if not _is_int(count) or count < 2:
        raise ValueError(f"a twins ensemble needs at least 2 members, got count={count!r}")
    if source == "update_k":
        return tuple(range(1, 2 * count, 2))  # 1, 3, 5, ...: the paper's odd k
    if source == "ulp_init":
        return tuple(range(count))
    if source == "bitflip_init":
        return (UNCHANGED,) + tuple(range(count - 1))  # mantissa bits 0, 1, ...
    if source == "reduction_order":
        return (UNCHANGED,) + tuple(range(1, count))
    if source == "dtype":
        return ("fp64", "fp32", "bf16")
    if source in _SEED_KEYS:
        recipe_seeds = {config.seeds[key] for key in _SEED_KEYS[source]}
        if len(recipe_seeds) > 1:  # member 0 would not be the recipe
            raise ValueError(
                f"source 'seed' sets the init, data and aug seeds together, but the "
                f"recipe's differ ({sorted(recipe_seeds)}): give the values"
            )
        base = recipe_seeds.pop()
        return tuple(range(base, base + count))
    return (0,) * count  # none


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(source: str, value, minimum: int, meaning: str) -> int:
    """value as an int, or a ValueError naming it and what is allowed."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{source} needs integers {meaning}, got {value!r}")
    return int(value)


def make_members(
    config,
    source: str,
    values=None,
    count: int = 6,
    tensor: str = "conv1/kernel",
    index: tuple[int, ...] = (),
) -> list[Member]:
    """Members that differ from `config` by `source` alone (member 0 is the reference).

    values: one per member (None or empty: default_values); tensor / index: the entry the
    init sources edit. Errors in the values (unknown source, fewer than 2 members, k < 1, a
    bit outside the mantissa, a negative seed) are a ValueError here; a bad tensor or entry
    is one when the edit meets the params (Ensemble.init).
    """
    check_source(source)
    values = tuple(values) if values else default_values(source, count, config)
    if len(values) < 2:
        raise ValueError(f"source {source!r} needs at least 2 members, got values {values}")
    return [_member(config, source, v, tensor, tuple(index)) for v in values]


def _member(config, source, value, tensor, index) -> Member:
    config = config.copy_and_resolve_references()
    if source == "none":
        return Member("copy", config)
    if source == "update_k":
        config.optimizer.k = _check_int(source, value, 1, "k >= 1")
        return Member(f"k={config.optimizer.k}", config)
    if source == "ulp_init":
        n = _check_int(source, value, -(2**31), "n (ulps)")
        edit = InitEdit("ulp", tensor, index, n) if n else None
        return Member(f"ulp{n:+d}", config, init_edit=edit)
    if source == "bitflip_init":
        bit = _check_int(source, value, UNCHANGED, "bit >= 0 (-1 = unchanged)")
        if bit == UNCHANGED:
            return Member("no flip", config)
        mantissa_bits = ml_dtypes.finfo(numerics.dtype_from_name(config.numerics.param_dtype)).nmant
        if bit >= mantissa_bits:
            raise ValueError(f"bitflip_init bit {bit} not in [0, {mantissa_bits}) (mantissa)")
        return Member(f"bit {bit}", config, init_edit=InitEdit("bit", tensor, index, bit))
    if source == "reduction_order":
        seed = _check_int(source, value, UNCHANGED, "seed >= 0 (-1 = stored order)")
        if seed == UNCHANGED:
            return Member("stored order", config)
        return Member(f"perm {seed}", config, permute_seed=seed)
    if source == "dtype":
        numerics.dtype_from_name(str(value))
        config.numerics.param_dtype = config.numerics.compute_dtype = str(value)
        return Member(str(value), config)
    seed = _check_int(source, value, 0, "seed >= 0")
    for key in _SEED_KEYS[source]:
        config.seeds[key] = seed
    return Member(f"{source}={seed}", config)


def needs_x64(members: list[Member]) -> bool:
    """Whether any member computes in fp64 (then x64 must be on for the whole process)."""
    return any(
        numerics.DtypePolicy(
            m.config.numerics.param_dtype, m.config.numerics.compute_dtype
        ).needs_x64
        for m in members
    )
