"""Named sources of difference: each member differs from the recipe by one thing, or is refused."""

import jax
import numpy as np
import pytest

from eos_jax import bits, recipe
from eos_jax.training import sources


def params():
    return {
        "conv1": {
            "kernel": np.array([[0.5, -0.25], [1e-40, 0.0]], np.float32),
            "bias": np.zeros(2, np.float32),
        }
    }


def test_every_source_builds_members_whose_reference_is_the_recipe():
    config = recipe.default_recipe()
    config.augment = True  # every source applies
    for name in sources.names():
        members = sources.make_members(config, name, count=4)
        assert len(members) == (3 if name == "dtype" else 4)
        if name != "dtype":
            assert members[0].config.to_dict() == config.to_dict(), name
            assert members[0].init_edit is None and members[0].reduction_order is None


def test_each_source_changes_only_its_knob():
    config = recipe.default_recipe()
    ks = [m.config.optimizer.k for m in sources.make_members(config, "update_k", count=6)]
    assert ks == [1, 3, 5, 7, 9, 11]
    seeds = sources.make_members(config, "seed", (4, 5))[1].config.seeds
    assert (seeds.init, seeds.data, seeds.aug) == (5, 5, 5)
    data = sources.make_members(config, "data_seed", (1, 2))[1].config.seeds
    assert (data.init, data.data, data.aug) == (1, 2, 1)
    orders = sources.make_members(config, "reduction_order", count=3)
    assert [m.reduction_order for m in orders] == [None, 1, 2]
    dtypes = sources.make_members(config, "dtype")
    assert [m.config.numerics.param_dtype for m in dtypes] == ["fp64", "fp32", "bf16"]
    assert sources.needs_x64(dtypes) and not sources.needs_x64(
        sources.make_members(config, "none", count=2)
    )
    flips = sources.make_members(config, "bitflip_init", count=3, tensor="conv1/kernel")
    assert flips[0].init_edit is None and flips[2].init_edit == sources.InitEdit(
        "bit", "conv1/kernel", (), 1
    )


@pytest.mark.parametrize(
    "source, values, message",
    [
        ("noise", None, "unknown source 'noise'"),
        ("update_k", (1, 0), "k >= 1"),
        ("update_k", (1, 2.5), "k >= 1"),
        ("bitflip_init", (-1, 23), "mantissa"),
        ("dtype", ("fp32", "fp16"), "unknown dtype"),
        ("ulp_init", (0,), "at least 2 members"),
        ("none", (0,), "at least 2 members"),
        ("ulp_init", (0, 1.5), "ulp_init needs integers"),
        ("bitflip_init", (-1, -2), "bit >= 0"),
        ("reduction_order", (-1, -3), "seed >= 0"),
        ("init_seed", (1, -1), "seed >= 0"),
    ],
)
def test_bad_values_are_refused(source, values, message):
    with pytest.raises(ValueError, match=message):
        sources.make_members(recipe.default_recipe(), source, values)


def test_bad_member_counts_and_edits_are_refused():
    config = recipe.default_recipe()
    for count in (0, 1):
        with pytest.raises(ValueError, match=f"at least 2 members, got count={count}"):
            sources.make_members(config, "update_k", count=count)
    config.seeds.data = 7  # 'seed' moves all three together: member 0 could not be the recipe
    with pytest.raises(ValueError, match=r"recipe's differ \(\[1, 7\]\)"):
        sources.make_members(config, "seed", count=2)
    assert sources.make_members(config, "seed", (1, 2))[0].config.seeds.data == 1
    with pytest.raises(ValueError, match="unknown init edit kind 'nudge'"):
        sources.InitEdit("nudge", "conv1/kernel", (), 1)
    with pytest.raises(ValueError, match="must be integers"):
        sources.InitEdit("ulp", "conv1/kernel", (0.5, 0), 1)


def test_ulp_edit_moves_one_entry_by_n_ulps_and_bitflip_flips_one_bit():
    p = params()
    moved = sources.InitEdit("ulp", "conv1/kernel", (), 3).apply(p)
    ulps = bits.ulp_distance(p["conv1"]["kernel"], np.asarray(moved["conv1"]["kernel"]))
    assert ulps.tolist() == [[3, 0], [0, 0]]  # default entry: the first normal nonzero one
    assert bits.tree_hash(moved["conv1"]["bias"]) == bits.tree_hash(p["conv1"]["bias"])
    flipped = sources.InitEdit("bit", "conv1/kernel", (0, 1), 22).apply(p)
    assert float(flipped["conv1"]["kernel"][0, 1]) == -0.375  # top mantissa bit of -0.25
    assert bits.tree_hash(p) == bits.tree_hash(params())  # the input is not modified


@pytest.mark.parametrize(
    "edit, message",
    [
        (sources.InitEdit("ulp", "conv9/kernel", (), 1), "no tensor 'conv9/kernel'.*conv1/kernel"),
        (sources.InitEdit("ulp", "conv1/kernel", (2, 0), 1), "out of range"),
        (sources.InitEdit("ulp", "conv1/kernel", (0,), 1), "out of range"),
        (sources.InitEdit("ulp", "conv1/kernel", (1, 1), 1), "zero, subnormal"),
        (sources.InitEdit("bit", "conv1/kernel", (1, 0), 3), "zero, subnormal"),  # subnormal
        (sources.InitEdit("ulp", "conv1/bias", (), 1), "no normal nonzero entry"),
    ],
)
def test_bad_edit_targets_are_refused(edit, message):
    with pytest.raises(ValueError, match=message):
        edit.apply(jax.tree.map(np.asarray, params()))


def test_registry_has_one_object_per_source_with_its_kind():
    kinds = {name: sources.get(name).kind for name in sources.names()}
    assert kinds["none"] == "control" and kinds["update_k"] == "rounding"
    assert set(sources.names("stochastic")) == {"init_seed", "data_seed", "aug_seed", "seed"}
    assert not sources.get("dtype").vmappable and sources.get("ulp_init").vmappable
    with pytest.raises(ValueError, match="source kind 'random'; allowed: control"):
        sources.register(sources.Source("jitter", "random", lambda n, c: (), lambda c, v, e: None))


def test_a_source_that_cannot_differ_under_the_recipe_is_refused():
    config = recipe.default_recipe()
    assert not config.augment
    with pytest.raises(ValueError, match="'aug_seed' does not apply.*no augmentation"):
        sources.make_members(config, "aug_seed", count=2)
    config.augment = True
    assert [m.label for m in sources.make_members(config, "aug_seed", count=2)] == [
        "aug_seed=1",
        "aug_seed=2",
    ]
