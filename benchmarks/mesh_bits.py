r"""Which device counts and mesh shapes change the bits? Trains a small CNN in fresh processes.

  python -m benchmarks.mesh_bits [--steps=12] [--workdir=/tmp/mesh_bits]

Each variant runs in its own process with XLA_FLAGS=--xla_force_host_platform_device_count
=N (the device count is fixed when JAX starts), trains the same recipe for --steps steps
and is compared with the single-device reference (relative L2 distance of the parameters,
largest ulp distance of any weight) and with the variants before it (which one, if any,
has the same bits). Prints a Markdown
table (recorded in docs/architecture.md). tests/test_mesh.py runs a few of these variants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

from eos_jax import bits, numerics, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (devices, members, strategy, mesh member, mesh data)
VARIANTS = {
    "reference: 1 device": (1, 1, "unrolled", 1, 1),
    "1 device, rerun": (1, 1, "unrolled", 1, 1),
    "2 devices, data=2": (2, 1, "unrolled", 1, 2),
    "4 devices, data=4": (4, 1, "unrolled", 1, 4),
    "8 devices, data=8": (8, 1, "unrolled", 1, 8),
    "4 devices, data=4, rerun": (4, 1, "unrolled", 1, 4),
    "4 members unrolled, 1 device": (1, 4, "unrolled", 1, 1),
    "4 members vmap, 1 device": (1, 4, "vmap", 1, 1),
    "4 members vmap, 4 devices, member=4": (4, 4, "vmap", 4, 1),
    "4 members vmap, 4 devices, member=2 data=2": (4, 4, "vmap", 2, 2),
    "4 members vmap, 4 devices, data=4": (4, 4, "vmap", 1, 4),
    "4 members vmap, 8 devices, member=4 data=2": (8, 4, "vmap", 4, 2),
}


def small_config(steps: int, member: int = 1, data: int = 1):
    """A tiny digits CNN (seconds per run on a loaded CPU)."""
    from eos_jax import recipe

    config = recipe.default_recipe()
    config.num_steps = steps
    config.batch_size = 64
    config.eval_every_steps = config.checkpoint_every_steps = 4
    config.model_kwargs = {"widths": (8, 16)}
    config.quiet = True
    config.mesh.member, config.mesh.data = member, data
    return config


def train(spec: dict) -> dict:
    """In this process: trains spec's ensemble for spec['steps'] steps (with a Trainer in
    spec['workdir'] when given, stopping at spec.get('stop_at')); saves member 0's params
    to spec['params'] (npz) when given; returns the member hashes, or the error."""
    config = small_config(spec["steps"], *spec.get("mesh", (1, 1)))
    config.batch_size = spec.get("batch_size", config.batch_size)
    try:
        return _train(config, spec)
    except (ValueError, results.WorkdirError) as e:
        return {"error": results.first_line(e)}


def _train(config, spec: dict) -> dict:
    from eos_jax.data import load_dataset
    from eos_jax.training import ensemble, sources, trainer

    members = (
        sources.make_members(config, "none", count=spec["members"])
        if spec["members"] > 1
        else [sources.Member("recipe", config)]
    )
    ens = ensemble.Ensemble(members, load_dataset("digits"), spec.get("strategy", "unrolled"))
    if spec.get("workdir"):
        summary = trainer.Trainer(ens, config, spec["workdir"]).run(spec.get("stop_at"))
        return {"hashes": summary.column("params_hash")}
    states = ens.init()
    for step in range(spec["steps"]):
        states, _ = ens.step(states, ens.batches(step))
    unpacked = ens.unpack(states)
    if spec.get("params"):
        np.savez(spec["params"], **bits.named_leaves(unpacked[0].params))
    return {"hashes": [bits.tree_hash(m.params) for m in unpacked]}


def run_in_process(devices: int, specs: list[dict], timeout: int = 300) -> list[dict]:
    """train(spec) for each spec, in one fresh process with `devices` forced CPU devices."""
    return run_child(devices, "benchmarks.mesh_bits", ["--child", json.dumps(specs)], timeout)


def run_child(devices: int, module: str, args: list[str], timeout: int = 300):
    """python -m module *args with `devices` forced host CPU devices; its last stdout line,
    parsed as JSON."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    if out.returncode:
        raise RuntimeError(f"{module} with {devices} devices failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def distance(path_a: str, path_b: str) -> dict:
    """Relative L2 distance and the largest ulp distance between two saved param sets."""
    a, b = dict(np.load(path_a)), dict(np.load(path_b))
    diff = bits.tree_diff(a, b)["total"]
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in a.values()))
    sq = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in a)
    return {"rel_l2": float(np.sqrt(sq) / norm), "max_ulp": int(diff["max_ulp"])}


_STEPS = flags.DEFINE_integer("steps", 12, "Training steps per variant.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where params go (default: a temporary dir).")
_CHILD = flags.DEFINE_string("child", None, "Internal: JSON specs to train in this process.")


def main(argv):
    del argv
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"))
    if _CHILD.value:
        print(json.dumps([train(spec) for spec in json.loads(_CHILD.value)]))
        return
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="mesh_bits_")
    os.makedirs(workdir, exist_ok=True)
    rows, reference = [], {}
    for i, (name, (devices, members, strategy, member, data)) in enumerate(VARIANTS.items()):
        params = os.path.join(workdir, f"{i}.npz")
        spec = dict(steps=_STEPS.value, members=members, strategy=strategy)
        spec.update(mesh=(member, data), params=params)
        (result,) = run_in_process(devices, [spec])
        reference = reference or {"hash": result["hashes"][0], "params": params}
        d = distance(reference["params"], params)
        first = next((r["variant"] for r in rows if r["hash"] == result["hashes"][0]), "-")
        rows.append(
            {
                "variant": name,
                "hash": result["hashes"][0],
                "member 0 has the bits of": first,
                "rel. L2 distance": f"{d['rel_l2']:.1e}",
                "max ulp": d["max_ulp"],
                "identical members stay identical": len(set(result["hashes"])) == 1,
            }
        )
        print(rows[-1], flush=True)
    print(f"\n{_STEPS.value} steps, small CNN (8, 16) on digits, batch 64, fp32:\n")
    print(results.markdown_table([{k: v for k, v in r.items() if k != "hash"} for r in rows]))


if __name__ == "__main__":
    app.run(main)
