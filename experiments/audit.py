r"""Is training bit-reproducible here? Trains a few steps in fresh processes and compares bits.

  python -m experiments.audit --workdir=/tmp/audit [--config=... --config.num_steps=20]

Runs the recipe twice with identical settings (the reproducibility claim), then once per
variant that should change the bits (one CPU thread; no FMA contraction; the batch split
over 2 CPU devices, config.mesh.data=2), each in a fresh process, and reports which final
parameter hashes agree, with the fingerprint of the first.
Exits with status 2 (common.EXIT_NOT_REPRODUCIBLE) when the repeat is not bit-identical.
"""

import os
import platform
import subprocess
import sys

from absl import app, flags

from eos_jax import numerics, results
from experiments import common

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the audit's runs and report go.", required=True
)
_STEPS = flags.DEFINE_integer("steps", 20, "Training steps per run.")
_CONFIG = flags.DEFINE_string("config", "experiments/configs/default.py", "Recipe file.")


# Two forced host CPU devices for the data-parallel variant (set before JAX starts).
TWO_CPU_DEVICES = {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}


def variants() -> dict[str, tuple[list[str], dict[str, str]]]:
    """Name -> (extra train flags, extra environment). 'repeat' must match 'reference'; the
    others probe sensitivity."""
    out = {"reference": ([], {}), "repeat": ([], {})}
    if len(os.sched_getaffinity(0)) > 1:
        out["cpu_threads=1"] = (["--config.numerics.cpu_threads=1"], {})
    if platform.machine() in ("x86_64", "AMD64"):
        out["no_fma"] = ([f"--config.numerics.xla_flags={numerics.NO_FMA_XLA_FLAGS!r}"], {})
    out["2_cpu_devices_data=2"] = (["--config.mesh.data=2"], TWO_CPU_DEVICES)
    return out


def train_in_fresh_process(
    run_dir: str, extra: list[str], overrides: list[str], env: dict[str, str]
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={_CONFIG.value}",
        f"--workdir={run_dir}",
        f"--config.num_steps={_STEPS.value}",
        "--config.quiet=True",
        *overrides,
        *extra,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if out.returncode != 0:  # the run's own exit status, e.g. common.EXIT_DIVERGED
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        print(f"error: audit run {run_dir} failed: {last}", file=sys.stderr)
        sys.exit(out.returncode if out.returncode > 0 else common.EXIT_ERROR)
    return results.read_json(os.path.join(run_dir, results.SUMMARY))


@common.entry_point
def main(argv):
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    if len(overrides) != len(argv) - 1:
        raise app.UsageError(f"unexpected arguments: {[a for a in argv[1:] if a not in overrides]}")
    common.check_config(_CONFIG.value, argv)
    workdir = _WORKDIR.value
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise results.WorkdirError(f"workdir {workdir!r} is not empty; an audit needs a new one")
    results.lock_workdir(workdir)
    rows = []
    for name, (extra, env) in variants().items():
        print(f"audit: training {_STEPS.value} steps in a fresh process: {name}", flush=True)
        summary = train_in_fresh_process(
            os.path.join(workdir, name.replace("=", "_")), extra, overrides, env
        )
        rows.append({"variant": name, "params_hash": summary["members"][0]["params_hash"][:16]})
    reference = rows[0]["params_hash"]
    for row in rows:
        row["identical_to_reference"] = row["params_hash"] == reference
    reproducible = rows[1]["identical_to_reference"]
    fingerprint = results.read_json(os.path.join(workdir, "reference", "fingerprint.json"))
    table = results.markdown_table(rows)
    results.atomic_write_text(os.path.join(workdir, "audit.md"), table)
    print(table)
    print(
        f"backend {fingerprint['backend']} {fingerprint['device_kinds']}, "
        f"{fingerprint['cpu_threads']} CPU threads, XLA_FLAGS={fingerprint['xla_flags']!r}"
    )
    print("bit-identical across fresh processes:", "YES" if reproducible else "NO")
    results.finish(
        workdir, {"reproducible": reproducible, "runs": rows, "fingerprint": fingerprint}
    )
    if not reproducible:
        sys.exit(common.EXIT_NOT_REPRODUCIBLE)


if __name__ == "__main__":  # --config.* overrides are not flags here: they go to the runs
    common.start(main, known_only=True)
