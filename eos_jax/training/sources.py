"""Sources of difference between lockstep members: a registry, one object per source.

A source turns one recipe (an ml_collections config) and a value per member into members
that differ from the recipe in exactly one thing; member 0 is the reference. With the
default values member 0 is the recipe itself for every source but `dtype` (reference: fp64).

    source            kind        value of a member                 what differs
    none              control     ignored                           nothing
    update_k          rounding    k >= 1                            w <- w - (lr*k)*(d/k)
    ulp_init          rounding    n (ulps; 0 = unchanged)           one entry of one initial tensor
    bitflip_init      rounding    mantissa bit (-1 = unchanged)     one entry of one initial tensor
    reduction_order   rounding    seed (-1 = stored order)          order of examples inside a batch
    dtype             rounding    'bf16' | 'fp32' | 'fp64'          arithmetic precision
    init_seed         stochastic  seed                              initial weights
    data_seed         stochastic  seed                              order of examples
    aug_seed          stochastic  seed                              crops and flips
    seed              stochastic  seed                              all three seeds (the paper's)

Adding a source is one `register(Source(...))` and its test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_dtypes
import numpy as np

from eos_jax import bits, numerics, recipe

KINDS = ("control", "rounding", "stochastic")
UNCHANGED = -1  # the value of bitflip_init / reduction_order that leaves the recipe alone
EDIT_KINDS = ("ulp", "bit")


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
        if not all(recipe.is_int(i) for i in self.index):
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

    def describe(self, params) -> dict:
        """What the edit changes in `params`: tensor, entry, and the value before and after."""
        tensor, index = self.resolve(params)
        return {
            "kind": self.kind,
            "tensor": tensor,
            "index": list(index),
            "amount": self.amount,
            "value_before": float(bits.named_leaves(params)[tensor][index]),
            "value_after": float(bits.named_leaves(self.apply(params))[tensor][index]),
        }


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a lockstep run: its own recipe, plus what the recipe cannot say."""

    label: str
    config: Any  # ml_collections.ConfigDict: seeds, optimizer.k and numerics may differ
    source: str = "none"
    init_edit: InitEdit | None = None
    reduction_order: int | None = None  # seed of the order of examples inside each batch


@dataclasses.dataclass(frozen=True)
class Source:
    """One source of difference.

    default_values(count, config): the values of `count` members (member 0: the reference).
    member(config, value, edit_at): the Member for one value (config is a private copy);
        edit_at = (tensor, index), the entry that init edits change.
    vmappable: members differ only in what a vmapped step can batch (state, batches).
    not_applicable(config): why the source cannot differ under this recipe, or None.
    """

    name: str
    kind: str
    default_values: Callable[[int, Any], tuple]
    member: Callable[[Any, Any, tuple], Member]
    vmappable: bool = True
    not_applicable: Callable[[Any], str | None] = lambda config: None


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    if source.kind not in KINDS:
        raise ValueError(f"source kind {source.kind!r}; allowed: {', '.join(KINDS)}")
    SOURCES[source.name] = source
    return source


def get(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered source names, all or of one kind, in registration order."""
    return tuple(n for n, s in SOURCES.items() if kind is None or s.kind == kind)


def _check_int(source: str, value, minimum: int, meaning: str) -> int:
    """value as an int, or a ValueError naming it and what is allowed."""
    if not recipe.is_int(value) or value < minimum:
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

    values: one per member (None or empty: the source's default values for `count` members);
    tensor / index: the entry the init sources edit. Bad values (unknown source, fewer than 2
    members, k < 1, a bit outside the mantissa, a negative seed, a source that does not apply
    to the recipe) are a ValueError here; a bad tensor or entry when the edit meets the params.
    """
    src = get(source)
    reason = src.not_applicable(config)
    if reason:
        raise ValueError(f"source {source!r} does not apply to this recipe: {reason}")
    if not values:
        if not recipe.is_int(count) or count < 2:
            raise ValueError(f"a twins ensemble needs at least 2 members, got count={count!r}")
        values = src.default_values(count, config)
    values = tuple(values)
    if len(values) < 2:
        raise ValueError(f"source {source!r} needs at least 2 members, got values {values}")
    edit_at = (tensor, tuple(index))
    return [
        dataclasses.replace(
            src.member(config.copy_and_resolve_references(), v, edit_at), source=source
        )
        for v in values
    ]


def needs_x64(members: list[Member]) -> bool:
    """Whether any member computes in fp64 (then x64 must be on for the whole process)."""
    return any(
        numerics.DtypePolicy(
            m.config.numerics.param_dtype, m.config.numerics.compute_dtype
        ).needs_x64
        for m in members
    )


# --- the registered sources ---------------------------------------------------------------


def _update_k(config, value, edit_at) -> Member:
    config.optimizer.k = _check_int("update_k", value, 1, "k >= 1")
    return Member(f"k={config.optimizer.k}", config)


def _ulp_init(config, value, edit_at) -> Member:
    n = _check_int("ulp_init", value, -(2**31), "n (ulps)")
    edit = InitEdit("ulp", *edit_at, n) if n else None
    return Member(f"ulp{n:+d}", config, init_edit=edit)


def _bitflip_init(config, value, edit_at) -> Member:
    bit = _check_int("bitflip_init", value, UNCHANGED, "bit >= 0 (-1 = unchanged)")
    if bit == UNCHANGED:
        return Member("no flip", config)
    mantissa_bits = ml_dtypes.finfo(numerics.dtype_from_name(config.numerics.param_dtype)).nmant
    if bit >= mantissa_bits:
        raise ValueError(f"bitflip_init bit {bit} not in [0, {mantissa_bits}) (mantissa)")
    return Member(f"bit {bit}", config, init_edit=InitEdit("bit", *edit_at, bit))


def _reduction_order(config, value, edit_at) -> Member:
    seed = _check_int("reduction_order", value, UNCHANGED, "seed >= 0 (-1 = stored order)")
    if seed == UNCHANGED:
        return Member("stored order", config)
    return Member(f"perm {seed}", config, reduction_order=seed)


def _dtype(config, value, edit_at) -> Member:
    numerics.dtype_from_name(str(value))
    config.numerics.param_dtype = config.numerics.compute_dtype = str(value)
    return Member(str(value), config)


def _seed_source(name: str, keys: tuple[str, ...], not_applicable=lambda config: None) -> Source:
    """A stochastic source that sets the recipe's seeds `keys` to the member's value."""

    def default_values(count, config):
        recipe_seeds = {config.seeds[key] for key in keys}
        if len(recipe_seeds) > 1:  # member 0 would not be the recipe
            raise ValueError(
                f"source {name!r} sets the {', '.join(keys)} seeds together, but the "
                f"recipe's differ ({sorted(recipe_seeds)}): give the values"
            )
        base = recipe_seeds.pop()
        return tuple(range(base, base + count))

    def member(config, value, edit_at):
        seed = _check_int(name, value, 0, "seed >= 0")
        for key in keys:
            config.seeds[key] = seed
        return Member(f"{name}={seed}", config)

    return Source(name, "stochastic", default_values, member, not_applicable=not_applicable)


def _no_augmentation(config) -> str | None:
    return None if config.augment else "the recipe has no augmentation (config.augment=False)"


register(
    Source("none", "control", lambda count, c: (0,) * count, lambda c, v, e: Member("copy", c))
)
register(Source("update_k", "rounding", lambda count, c: tuple(range(1, 2 * count, 2)), _update_k))
register(Source("ulp_init", "rounding", lambda count, c: tuple(range(count)), _ulp_init))
register(
    Source(
        "bitflip_init",
        "rounding",
        lambda count, c: (UNCHANGED, *range(count - 1)),  # mantissa bits 0, 1, ...
        _bitflip_init,
    )
)
register(
    Source(
        "reduction_order",
        "rounding",
        lambda count, c: (UNCHANGED, *range(1, count)),
        _reduction_order,
    )
)
register(
    Source("dtype", "rounding", lambda count, c: ("fp64", "fp32", "bf16"), _dtype, vmappable=False)
)
register(_seed_source("init_seed", ("init",)))
register(_seed_source("data_seed", ("data",)))
register(_seed_source("aug_seed", ("aug",), not_applicable=_no_augmentation))
register(_seed_source("seed", ("init", "data", "aug")))
