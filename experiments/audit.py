r"""Is training bit-reproducible here? Trains a few steps in fresh processes and compares bits.

  python -m experiments.audit --workdir=/tmp/audit [--config=... --config.num_steps=20]

Runs the recipe twice with identical settings (the reproducibility claim), then once per
variant that should change the bits (one CPU thread; no FMA contraction; the batch split
over 2 CPU devices, config.mesh.data=2; --variants picks some), each in a fresh process, and
reports which final parameter hashes agree, with the fingerprint of the first.
Exits with status 2 (common.EXIT_NOT_REPRODUCIBLE) when the repeat is not bit-identical.
Rerunning the same command after a crash or a kill continues: finished runs are kept.
"""

import os
import platform
import subprocess
import sys

from absl import app, flags

from eos_jax import numerics, results
from eos_jax.training.summary import RunSummary
from experiments import common

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the audit's runs and report go.", required=True
)
_STEPS = flags.DEFINE_integer("steps", 20, "Training steps per run.")
_CONFIG = flags.DEFINE_string("config", "experiments/configs/default.py", "Recipe file.")
_VARIANTS = flags.DEFINE_list(
    "variants",
    None,
    "The variants to run besides 'reference' and 'repeat' (default: all that apply here: "
    "cpu_threads=1, no_fma, 2_cpu_devices_data=2; empty: none).",
)
# The audit's settings, written when it starts: a rerun with the same ones continues it.
SETTINGS = "audit.json"


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


def chosen_variants() -> dict[str, tuple[list[str], dict[str, str]]]:
    """variants(), restricted to --variants (reference and repeat always run)."""
    available = variants()
    if _VARIANTS.value is None:
        return available
    unknown = [v for v in _VARIANTS.value if v not in available]
    if unknown:
        known = ", ".join(v for v in available if v not in ("reference", "repeat"))
        raise app.UsageError(f"unknown --variants {unknown}; available here: {known}")
    wanted = ("reference", "repeat", *_VARIANTS.value)
    return {k: v for k, v in available.items() if k in wanted}


def claim_workdir(workdir: str, settings: dict) -> None:
    """Locks workdir for this audit. A new or empty one (or one holding only what a failed
    start left: the lock and the settings) starts afresh; one holding an unfinished audit
    with the same settings continues it; anything else is a WorkdirError."""
    ours = {results.LOCK, SETTINGS}
    if os.path.isdir(workdir) and set(os.listdir(workdir)) - ours:
        path = os.path.join(workdir, SETTINGS)
        if results.is_finished(workdir):
            raise results.WorkdirError(
                f"workdir {workdir!r} holds a finished audit; an audit needs a new one"
            )
        if not os.path.exists(path):
            raise results.WorkdirError(
                f"workdir {workdir!r} is not empty; an audit needs a new one"
            )
        if results.read_json(path) != settings:
            raise results.WorkdirError(
                f"workdir {workdir!r} holds an unfinished audit with other settings "
                f"({SETTINGS}); rerun it as it was or use a new --workdir"
            )
    results.lock_workdir(workdir)
    results.write_json(os.path.join(workdir, SETTINGS), settings)


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
    if results.is_finished(run_dir):  # an audit that was stopped and is run again
        return RunSummary.read(run_dir)
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if out.returncode != 0:  # the run's own exit status, e.g. common.EXIT_DIVERGED
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        print(f"error: audit run {run_dir} failed: {last}", file=sys.stderr)
        sys.exit(out.returncode if out.returncode > 0 else common.EXIT_ERROR)
    return RunSummary.read(run_dir)


@common.entry_point
def main(argv):
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    if len(overrides) != len(argv) - 1:
        raise app.UsageError(f"unexpected arguments: {[a for a in argv[1:] if a not in overrides]}")
    common.check_config(_CONFIG.value, argv)
    workdir = _WORKDIR.value
    chosen = chosen_variants()
    settings = {
        "config": _CONFIG.value,
        "steps": _STEPS.value,
        "overrides": overrides,
        "variants": list(chosen),
    }
    claim_workdir(workdir, settings)
    rows = []
    for name, (extra, env) in chosen.items():
        run_dir = os.path.join(workdir, name.replace("=", "_"))
        if results.is_finished(run_dir):
            print(f"audit: {name} finished before this rerun: kept", flush=True)
        else:
            print(f"audit: training {_STEPS.value} steps in a fresh process: {name}", flush=True)
        summary = train_in_fresh_process(run_dir, extra, overrides, env)
        rows.append({"variant": name, "params_hash": summary.members[0].params_hash[:16]})
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
