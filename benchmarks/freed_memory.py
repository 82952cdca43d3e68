r"""glibc keeping freed memory (numerics.reuse_freed_memory, numerics.configure's default)
against glibc's default malloc, on a K-member lockstep ensemble.

  python -m benchmarks.freed_memory [--recipe=mnist1d_resnet] [--k=8] [--steps=20] [--rounds=3]

The setting is process-wide and must precede the backend, so each arm runs in its own child
process; rounds alternate the arms, the order reversed every round. Per round and arm it
prints the ms a step and, over the compiled steps (the timed ones and 2 warm-up steps), the
minor page faults a step and the CPU seconds spent in the kernel and in user code. Then the
median ratio of step times (default malloc / reused memory), and whether the two arms'
states after the steps hash the same (they must: the allocator decides where buffers live,
not what is computed).
"""

import json
import os
import resource
import statistics
import subprocess
import sys

from absl import app, flags

from benchmarks import common
from eos_jax import bits, numerics
from eos_jax.training import ensemble, sources

_RECIPE = flags.DEFINE_enum("recipe", "mnist1d_resnet", list(common.NAMES), "Recipe timed.")
_K = flags.DEFINE_integer("k", 8, "Members (update_k twins) in the ensemble.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds; each runs both arms once.")
_ARM = flags.DEFINE_enum("arm", None, ["reuse", "default"], "Internal: run one arm, print JSON.")


def run_arm(reuse: bool) -> dict:
    """One arm in this process: ms a step, page faults, kernel and user seconds, state hash."""
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"), reuse_memory=reuse)
    config, dataset = common.benchmark_recipe(_RECIPE.value)
    members = sources.make_members(config, "update_k", count=_K.value)
    ens = ensemble.Ensemble(members, dataset, "unrolled")  # as the studies run on CPUs
    common.time_steps(ens, 1)  # compiles, so that the counts below are of compiled steps
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds, state = common.time_steps(ens, _STEPS.value)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ms/step": 1e3 * seconds,
        "minor faults/step": (after.ru_minflt - before.ru_minflt) / (_STEPS.value + 2),
        "kernel s": after.ru_stime - before.ru_stime,
        "user s": after.ru_utime - before.ru_utime,
        "state hash": bits.tree_hash(state)[:16],
        "machine": numerics.machine_line(numerics.fingerprint(numerics.DtypePolicy())),
    }


def child(arm: str) -> dict:
    """One arm in a fresh process: 'reuse' as the mains run (the tunables from the start,
    then numerics.configure's in-process setting), 'default' with neither."""
    others = os.environ.get("GLIBC_TUNABLES", "").replace(numerics.MALLOC_TUNABLES, "").strip(":")
    tunables = numerics.with_malloc_tunables(others) if arm == "reuse" else others
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
    argv = [sys.executable, "-m", "benchmarks.freed_memory", f"--arm={arm}"]
    argv += [f"--recipe={_RECIPE.value}", f"--k={_K.value}", f"--steps={_STEPS.value}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    return {"arm": arm, **json.loads(out.strip().splitlines()[-1])}


def main(argv):
    del argv
    if _ARM.value:
        print(json.dumps(run_arm(_ARM.value == "reuse")))
        return
    rows = []
    for r in range(_ROUNDS.value):
        arms = ("default", "reuse") if r % 2 == 0 else ("reuse", "default")
        for arm in arms:
            rows.append({"round": r, **child(arm)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "machine"}), flush=True)
    ms = {a: [row["ms/step"] for row in rows if row["arm"] == a] for a in ("default", "reuse")}
    ratios = [d / u for d, u in zip(ms["default"], ms["reuse"], strict=True)]
    hashes = {row["state hash"] for row in rows}
    print(
        f"{_RECIPE.value}, {_K.value} members, {_STEPS.value} steps: default malloc / reused "
        f"memory, ms a step: median {statistics.median(ratios):.2f} over {len(ratios)} rounds "
        f"(each round: {', '.join(f'{x:.2f}' for x in ratios)}); states "
        f"{'bit-identical' if len(hashes) == 1 else 'DIFFER'}"
    )
    print(rows[-1]["machine"])


if __name__ == "__main__":
    app.run(main)
