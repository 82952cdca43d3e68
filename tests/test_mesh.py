"""The device mesh: config checks, data parallelism within rounding, reruns and resume
bit-exact, the mesh in the fingerprint. Forced host devices need fresh processes."""

import pytest

from benchmarks import mesh_bits
from eos_jax import recipe, results
from eos_jax.training import mesh

STEPS = 12


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"member": 0, "data": -1}, r"config.mesh.member=0 must be an integer >= 1, or -1"),
        ({"member": 1, "data": "all"}, r"config.mesh.data='all' must be an integer"),
        ({"member": -1, "data": -1}, "cannot both be -1"),
    ],
)
def test_bad_mesh_fields_are_refused_before_any_device_is_asked(fields, message):
    with pytest.raises(ValueError, match=message):
        recipe.validate_mesh(fields)
    config = recipe.default_recipe()
    config.mesh.member = 0
    with pytest.raises(ValueError, match="config.mesh.member=0"):
        recipe.validate(config)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"member": 2, "data": 3}, "member=2 x data=3 needs 6 devices; 4 are available"),
        ({"member": 3, "data": -1}, "4 devices are not a multiple of 3"),
    ],
)
def test_meshes_that_do_not_fit_the_devices_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        mesh.shape(fields, 4)


def test_mesh_shapes_resolve_the_rest():
    assert mesh.shape({"member": 1, "data": -1}, 8) == (1, 8)
    assert mesh.shape({"member": -1, "data": 2}, 8) == (4, 2)
    assert mesh.shape({"member": 2, "data": 2}, 4) == (2, 2)


def test_single_device_mesh_shards_nothing():
    layout = mesh.Layout(mesh.from_config(recipe.default_recipe()), False, 1)
    assert not layout.active and layout.mesh.axis_names == mesh.AXES


def spec(workdir=None, params=None, mesh_shape=(1, -1), **kw):
    return dict(steps=STEPS, members=1, mesh=mesh_shape, workdir=workdir, params=params, **kw)


def test_data_parallel_is_rounding_close_rerun_identical_and_resumes_bit_exactly(tmp_path):
    d = lambda name: str(tmp_path / name)  # noqa: E731
    reference = mesh_bits.train(spec(params=d("ref.npz")))["hashes"][0]  # this process: 1 device
    four = mesh_bits.run_in_process(
        4,
        [
            spec(params=d("dp4.npz")),
            spec(),  # rerun in the same process
            spec(workdir=d("whole")),
            spec(workdir=d("split"), stop_at=6),
            spec(workdir=d("split")),  # resumed from its checkpoint on disk
            dict(spec(), members=2, strategy="unrolled", mesh=(2, 2)),
        ],
    )
    dp4, again, whole, split, resumed, unrolled_on_members = four
    assert dp4["hashes"] == again["hashes"]
    assert dp4["hashes"][0] != reference  # the shards' partial sums are added in another order
    distance = mesh_bits.distance(d("ref.npz"), d("dp4.npz"))
    assert 0 < distance["rel_l2"] < 1e-5, distance
    assert "needs strategy 'vmap'" in unrolled_on_members["error"]
    fingerprint = results.read_json(d("split/fingerprint.json"))
    assert fingerprint["mesh"] == {
        "axis_names": ["member", "data"],
        "shape": [1, 4],
        "process_count": 1,
    }
    assert resumed["hashes"] == whole["hashes"]  # resume is bit-exact on the same mesh
    assert split["hashes"] != whole["hashes"]


@pytest.mark.slow  # 4 fresh processes (~40 s CPU); 4 devices in one process: above
def test_eight_devices_and_fresh_processes(tmp_path):
    d = lambda name: str(tmp_path / name)  # noqa: E731
    mesh_bits.train(spec(params=d("ref.npz")))  # this process: 1 device
    mesh_bits.run_in_process(4, [spec(workdir=d("split"), stop_at=6)])
    eight = mesh_bits.run_in_process(
        8,
        [
            spec(workdir=d("split")),  # same config, data=-1 is now 8 devices: refused
            dict(spec(params=d("vmap8.npz")), members=4, strategy="vmap", mesh=(4, 2)),
            dict(spec(), batch_size=60),
        ],
    )
    assert "other numerics" in eight[0]["error"] and "mesh" in eight[0]["error"]
    assert len(set(eight[1]["hashes"])) == 1  # identical members stay identical when split
    assert mesh_bits.distance(d("ref.npz"), d("vmap8.npz"))["rel_l2"] < 1e-5
    assert "batch size 60 does not split over config.mesh.data=8" in eight[2]["error"]

    dp4, whole = mesh_bits.run_in_process(4, [spec(), spec(workdir=d("whole"))])
    resumed, dp4_again = mesh_bits.run_in_process(4, [spec(workdir=d("split")), spec()])
    assert resumed["hashes"] == whole["hashes"]  # resumed in a fresh process
    assert dp4_again["hashes"] == dp4["hashes"]  # and reruns in a fresh process too
