"""The device mesh ("member", "data") from config.mesh, and where an ensemble's arrays live.

    config.mesh.member = 1    devices across ensemble members (vmap strategy only)
    config.mesh.data = -1     devices across the batch; -1: all devices the member axis leaves

Data parallelism is `jax.jit` with shardings (the maintained path; pmap is deprecated): the
batch is split over `data`, the state replicated (vmap: split over `member`), and XLA inserts
the all-reduces. BatchNorm statistics are therefore those of the GLOBAL batch, exactly as on
one device; only the order in which shards' partial sums are added differs (a rounding
difference, measured in docs/architecture.md). On a mesh of one device no sharding is
applied at all, so single-device runs keep their bits.

Arrays are placed with `jax.make_array_from_callback`: every process draws the same global
batch from the random-access BatchStream and hands over only the rows its devices hold, so
the same code feeds one process or many (eos_jax.distributed).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from eos_jax import recipe

AXES = ("member", "data")
DEFAULT = {"member": 1, "data": -1}  # recipes without a mesh group: all devices on data


def shape(mesh_config, device_count: int) -> tuple[int, int]:
    """(member, data) sizes with -1 resolved; their product must be the device count."""
    recipe.validate_mesh(mesh_config)
    sizes = [mesh_config["member"], mesh_config["data"]]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if device_count % known:
            raise ValueError(
                f"config.mesh {sizes[0]} x {sizes[1]}: {device_count} devices are not a "
                f"multiple of {known}"
            )
        sizes[sizes.index(-1)] = device_count // known
    if math.prod(sizes) != device_count:
        raise ValueError(
            f"config.mesh member={sizes[0]} x data={sizes[1]} needs {math.prod(sizes)} "
            f"devices; {device_count} are available"
        )
    return sizes[0], sizes[1]


def from_config(config) -> Mesh:
    """The ("member", "data") mesh of all devices (every process's) from config.mesh."""
    sizes = shape(config.get("mesh") or DEFAULT, jax.device_count())
    # Auto axes: the compiler propagates shardings through model code that never names them.
    return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def describe(mesh: Mesh) -> dict:
    """What the fingerprint records of a mesh: axis names, sizes, processes."""
    return {
        "axis_names": list(mesh.axis_names),
        "shape": [int(mesh.shape[a]) for a in mesh.axis_names],
        "process_count": jax.process_count(),
    }


class Layout:
    """Shardings of an ensemble's state, batches and outputs on a mesh.

    stacked: the member states are stacked on a leading axis (vmap), split over `member`;
    otherwise (unrolled, or one member) the member axis must be 1. `active` is False on a
    one-device mesh, where nothing is sharded and arrays are placed as before.
    """

    def __init__(self, mesh: Mesh, stacked: bool, num_members: int):
        self.mesh = mesh
        self.members, self.data = int(mesh.shape["member"]), int(mesh.shape["data"])
        if self.members > 1 and not stacked:
            raise ValueError(
                f"config.mesh.member={self.members} splits members across devices, which "
                "needs strategy 'vmap'; set config.mesh.member=1 for 'unrolled'"
            )
        if num_members % self.members:
            raise ValueError(
                f"config.mesh.member={self.members} must divide the member count {num_members}"
            )
        self.active = mesh.size > 1
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.state = NamedSharding(mesh, PartitionSpec("member") if stacked else PartitionSpec())
        self.batch = NamedSharding(mesh, PartitionSpec("data"))
        self.stacked_batch = NamedSharding(mesh, PartitionSpec("member", "data"))

    def check_batch_sizes(self, sizes) -> None:
        """ValueError unless every training batch size splits evenly over `data`."""
        bad = sorted({int(s) for s in sizes if s % self.data})
        if bad:
            raise ValueError(
                f"batch size {bad[0]} does not split over config.mesh.data={self.data} devices; "
                "choose a batch size (and, without drop_last_batch, a last batch) divisible by it"
            )

    def put(self, tree, sharding: NamedSharding):
        """The host values of `tree` as global arrays with `sharding`; each process transfers
        only the slices of its own devices (all processes must pass the same values)."""
        return jax.tree.map(lambda x: _global_array(np.asarray(x), sharding), tree)

    def jit_step(self, step, stacked_batch: bool):
        """jax.jit of step(states, batches) -> (states, metrics) with the state donated and
        its sharding kept; metrics replicated (every process can read them)."""
        if not self.active:
            return jax.jit(step, donate_argnums=0)
        batch = self.stacked_batch if stacked_batch else self.batch
        return jax.jit(
            step,
            donate_argnums=0,
            in_shardings=(self.state, batch),
            out_shardings=(self.state, self.replicated),
        )

    def jit_eval(self, evaluate):
        """jax.jit of evaluate(states, images) -> logits; images and logits replicated, so
        evaluation is the single-device computation on every device (bit-identical)."""
        if not self.active:
            return jax.jit(evaluate)
        return jax.jit(
            evaluate,
            in_shardings=(self.state, self.replicated),
            out_shardings=self.replicated,
        )


def _global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
