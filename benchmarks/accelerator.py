r"""What determinism and matmul precision cost on the device at hand, and whether reruns
keep their bits; then unrolled vs vmap ensembles. Written for GPUs and TPUs, runs anywhere.

  python -m benchmarks.accelerator [--recipe=resnet20] [--steps=20] [--k=6]
      [--variants=deterministic,nondeterministic,tf32] [--json_out=PATH]

Each variant runs in a fresh process, because XLA flags are fixed when JAX starts:
  deterministic     --xla_gpu_deterministic_ops=true, matmul precision 'highest' (baseline)
  nondeterministic  without that flag (no effect off GPU)
  tf32              deterministic, matmul precision 'default' (TF32 on Ampere and newer
                    GPUs, one bf16 pass on TPU; fp32 on CPU)
In each: one run's ms per step (2 warm-up steps, then --steps timed), and two runs from the
same initial state compared bit for bit after --steps steps ('rerun bit-identical'), and
with the baseline ('bits as baseline'). In the baseline process a K-member ensemble of
twins, unrolled and vmap: ms per step against K one runs, and whether member 0 keeps the
one run's bits. Prints Markdown tables of ratios measured in this one invocation.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
from absl import app, flags

from benchmarks import common
from eos_jax import bits, numerics, results
from eos_jax.training import ensemble, sources

VARIANTS = {  # name -> (deterministic ops, matmul precision)
    "deterministic": (True, "highest"),
    "nondeterministic": (False, "highest"),
    "tf32": (True, "default"),
}
BASELINE = "deterministic"

_RECIPE = flags.DEFINE_enum("recipe", "resnet20", common.NAMES, "What to train.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
_K = flags.DEFINE_integer("k", 6, "Ensemble size for unrolled vs vmap.")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Any of {', '.join(VARIANTS)}.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the rows as JSON here.")
_CHILD = flags.DEFINE_string("child", None, "Internal: the variant this process measures.")


def _timed_run(ens, steps: int) -> tuple[float, list[str]]:
    """(seconds per step, as common.time_steps, and the members' params hashes after it)."""
    seconds, state = common.time_steps(ens, steps)
    return seconds, [bits.tree_hash(m.params) for m in ens.unpack(state)]


def measure(variant: str) -> dict:
    """In this (fresh) process: the variant's numerics, then its timings and hashes."""
    deterministic, precision = VARIANTS[variant]
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"), precision, None, deterministic)
    config, dataset = common.benchmark_recipe(_RECIPE.value)
    one = ensemble.Ensemble([sources.Member("one run", config)], dataset, "unrolled")
    runs = [_timed_run(one, _STEPS.value) for _ in range(2)]
    out = {
        "variant": variant,
        "device": jax.devices()[0].device_kind,
        "ms/step": 1e3 * runs[1][0],  # the second run: nothing left to compile
        "hash": runs[0][1][0],
        "rerun bit-identical": runs[0][1] == runs[1][1],
    }
    if variant == BASELINE:
        members = sources.make_members(config, "update_k", count=_K.value)
        out["ensembles"] = []
        for strategy in ensemble.STRATEGIES:
            ens = ensemble.Ensemble(members, dataset, strategy)
            seconds, hashes = _timed_run(ens, _STEPS.value)
            out["ensembles"].append(
                {
                    "strategy": strategy,
                    "K": _K.value,
                    "ms/step": 1e3 * seconds,
                    "vs K one runs": seconds / (_K.value * runs[1][0]),
                    "member 0 bits as one run": hashes[0] == out["hash"],
                }
            )
    return out


def _run_child(variant: str) -> dict:
    argv = [sys.executable, "-m", "benchmarks.accelerator", f"--child={variant}"]
    argv += [f"--recipe={_RECIPE.value}", f"--steps={_STEPS.value}", f"--k={_K.value}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"error: variant {variant!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if _CHILD.value is not None:
        print(json.dumps(measure(_CHILD.value)))
        return
    unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variants {unknown}; allowed: {', '.join(VARIANTS)}")
    if _STEPS.value < 1 or _K.value < 1:
        sys.exit(f"error: --steps={_STEPS.value} and --k={_K.value} must be >= 1")
    variants = [BASELINE] + [v for v in _VARIANTS.value if v != BASELINE]
    measured = {v: _run_child(v) for v in variants}
    base = measured[BASELINE]
    rows = [
        {
            "variant": v,
            "ms/step": m["ms/step"],
            "vs baseline": m["ms/step"] / base["ms/step"],
            "rerun bit-identical": m["rerun bit-identical"],
            "bits as baseline": m["hash"] == base["hash"],
        }
        for v, m in measured.items()
    ]
    print(f"device: {base['device']}; recipe {_RECIPE.value}; {_STEPS.value} timed steps\n")
    print(results.markdown_table(rows, "{:.3g}"))
    print(results.markdown_table(base["ensembles"], "{:.3g}"))
    if _JSON_OUT.value:
        results.write_json(_JSON_OUT.value, {"variants": rows, "ensembles": base["ensembles"]})


if __name__ == "__main__":
    app.run(main)
