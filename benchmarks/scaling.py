r"""Data-parallel and ensemble scaling over 1, 2, 4, 8 forced host CPU devices, as ratios.

  python -m benchmarks.scaling [--devices=1,2,4,8] [--timed_steps=10]

Each device count runs in a fresh process (XLA_FLAGS=--xla_force_host_platform_device_count
=N). Timed there: one run with the batch split over all devices (data=N), and a vmap
ensemble of 8 members split over the devices (member=N). Reported: time per step relative
to 1 device (< 1: faster). Forced host devices are NOT extra hardware: they share this
machine's cores (and XLA:CPU's thread pool), so these ratios measure the overhead of
sharding and collectives, not the speed-up real accelerators would give.
"""

from __future__ import annotations

import json

from absl import app, flags

from benchmarks import common, mesh_bits
from eos_jax import numerics, results

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Forced host device counts.")
_STEPS = flags.DEFINE_integer("timed_steps", 10, "Timed steps (after 2 warm-up steps).")
_CHILD = flags.DEFINE_integer("child_devices", None, "Internal: time in this process, N devices.")
MEMBERS = 8


def seconds_per_step(members: int, strategy: str, mesh: tuple[int, int], steps: int) -> float:
    """Mean time of `steps` steps after 2 warm-up (compiling) steps (common.time_steps)."""
    from eos_jax.data import load_dataset
    from eos_jax.training import ensemble, sources

    config = mesh_bits.small_config(steps + 2, *mesh)
    config.batch_size, config.model_kwargs = 128, {"widths": (16, 32, 32)}
    members_ = (
        sources.make_members(config, "none", count=members)
        if members > 1
        else [sources.Member("recipe", config)]
    )
    ens = ensemble.Ensemble(members_, load_dataset("digits"), strategy)
    return common.time_steps(ens, steps)[0]


def main(argv):
    del argv
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"))
    if _CHILD.value:
        n = _CHILD.value
        print(
            json.dumps(
                {
                    "data": seconds_per_step(1, "unrolled", (1, n), _STEPS.value),
                    "ensemble": seconds_per_step(MEMBERS, "vmap", (n, 1), _STEPS.value),
                }
            )
        )
        return
    rows, base = [], None
    for n in map(int, _DEVICES.value):
        timing = mesh_bits.run_child(
            n,
            "benchmarks.scaling",
            [f"--child_devices={n}", f"--timed_steps={_STEPS.value}"],
            timeout=600,
        )
        base = base or timing
        rows.append(
            {
                "devices": n,
                "1 run, data=N: s/step": timing["data"],
                "1 run: ratio to 1 device": timing["data"] / base["data"],
                f"{MEMBERS} members vmap, member=N: s/step": timing["ensemble"],
                "ensemble: ratio to 1 device": timing["ensemble"] / base["ensemble"],
            }
        )
        print(rows[-1], flush=True)
    print(results.markdown_table(rows, "{:.3g}"))


if __name__ == "__main__":
    app.run(main)
