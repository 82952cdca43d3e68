"""Train-step time of eos_jax models against the same model and update in PyTorch (CPU).

    python -m benchmarks.step_time            # full run (a few minutes on 2 cores)
    python -m benchmarks.step_time --quick    # small models only, fewer rounds
    python -m benchmarks.step_time --threads=1 --models=resnet20

One step = forward, cross-entropy, backward, SGD (Nesterov 0.9, weight decay 5e-4) update,
batch 128, data already in memory. Both frameworks get the same thread count (process
affinity + XLA:CPU pool via eos_jax.numerics.configure, torch.set_num_threads). JAX and
PyTorch are timed in alternating rounds and the median round is reported, because the
machine may be shared: a busy neighbour then slows both sides alike.

The dtype ratios (fp64/fp32, bf16/fp32, JAX only) run in a child process with x64 enabled,
so that the JAX-vs-PyTorch comparison runs in the project's default numerics.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

from eos_jax import numerics

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Small models only and fewer rounds (about a minute).")
flags.DEFINE_integer("threads", None, "CPU threads for both frameworks (default: all available).")
flags.DEFINE_list(
    "models",
    None,
    "Subset of: " + ", ".join(("small_cnn_digits", "small_cnn_cifar", "resnet20", "resnet56")),
)
flags.DEFINE_integer("rounds", None, "Timed rounds per model (default 7, quick 5).")
flags.DEFINE_bool("dtypes", True, "Also measure JAX fp64/fp32 and bf16/fp32 ratios.")
flags.DEFINE_list(
    "dtype_models",
    ["small_cnn_digits", "small_cnn_cifar", "resnet20"],
    "Models for the dtype ratios (ResNet-56 in fp64 alone takes minutes); quick: quick models.",
)
flags.DEFINE_bool(
    "torch_channels_last", False, "Run the PyTorch twin in channels-last memory format."
)
flags.DEFINE_list(
    "xla_flags", [], "Extra XLA flags for the JAX side, e.g. --xla_cpu_use_xnnpack=true."
)
flags.DEFINE_string("json_out", None, "Also write the results as JSON to this path.")
flags.DEFINE_enum(
    "mode", "compare", ["compare", "dtypes"], "Internal: 'dtypes' is the child process."
)

BATCH = 128
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Case:
    """A benchmarked model: eos_jax model name and input image shape (H, W, C)."""

    label: str
    model: str
    shape: tuple[int, int, int]
    steps_per_round: int


CASES = {
    # The default recipe's model on the embedded 8x8x1 digits.
    "small_cnn_digits": Case("small_cnn_digits", "small_cnn", (8, 8, 1), 10),
    "small_cnn_cifar": Case("small_cnn_cifar", "small_cnn", (32, 32, 3), 3),
    "resnet20": Case("resnet20", "resnet20", (32, 32, 3), 1),
    "resnet56": Case("resnet56", "resnet56", (32, 32, 3), 1),
}
QUICK_MODELS = ("small_cnn_digits", "small_cnn_cifar")


def _selected_cases(names=None) -> list[Case]:
    names = names or FLAGS.models or (QUICK_MODELS if FLAGS.quick else tuple(CASES))
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise app.UsageError(f"unknown models {unknown}; known: {', '.join(CASES)}")
    return [CASES[n] for n in names]


def _rounds() -> int:
    return FLAGS.rounds or (5 if FLAGS.quick else 7)


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------- JAX side


def _jax_step(case: Case, policy: numerics.DtypePolicy, seed: int = 0):
    """Returns run() -> None doing one jitted, donated train step on a fixed batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from eos_jax.models import create_model
    from eos_jax.training import optim, steps

    model = create_model(
        case.model,
        num_classes=NUM_CLASSES,
        dtype=policy.compute_dtype,
        param_dtype=policy.param_dtype,
    )
    tx = optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    state = steps.init_state(model, tx, seed, case.shape)
    rng = np.random.default_rng(seed)
    batch = {
        "image": jnp.asarray(rng.normal(size=(BATCH, *case.shape)), policy.param_dtype),
        "label": jnp.asarray(rng.integers(0, NUM_CLASSES, BATCH), jnp.int32),
    }
    step = jax.jit(steps.make_train_step(model, tx), donate_argnums=0)
    holder = {"state": state}

    def run() -> None:
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    return run, num_params


# ------------------------------------------------------------------------- PyTorch side


def _torch_step(case: Case, threads: int, channels_last: bool, seed: int = 0):
    """Returns run() -> None doing one PyTorch train step of the twin on a fixed batch."""
    import torch

    from benchmarks import torch_models

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = torch_models.create_model(case.model, case.shape[-1], NUM_CLASSES)
    images = torch.randn(BATCH, case.shape[-1], *case.shape[:2])
    labels = torch.randint(0, NUM_CLASSES, (BATCH,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    step = torch_models.make_train_step(model, torch_models.make_optimizer(model))

    def run() -> None:
        step(images, labels)

    num_params = sum(p.numel() for p in model.parameters())
    return run, num_params


# ----------------------------------------------------------------------------- timing


def _time_interleaved(runs: dict[str, callable], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each run, over rounds that alternate the runs' order."""
    for run in runs.values():  # compile / warm up caches and allocators
        for _ in range(2):
            run()
    times = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                runs[name]()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: _median(t) for name, t in times.items()}


def _compare(threads: int) -> list[dict]:
    """JAX fp32 vs PyTorch fp32 for every selected model."""
    rows = []
    for case in _selected_cases():
        policy = numerics.DtypePolicy("fp32", "fp32")
        jax_run, jax_params = _jax_step(case, policy)
        torch_run, torch_params = _torch_step(case, threads, FLAGS.torch_channels_last)
        if jax_params != torch_params:
            raise RuntimeError(f"{case.label}: JAX {jax_params} vs PyTorch {torch_params} params")
        steps = max(1, case.steps_per_round // (2 if FLAGS.quick else 1))
        t = _time_interleaved({"jax": jax_run, "torch": torch_run}, steps, _rounds())
        rows.append(
            {
                "model": case.label,
                "params": jax_params,
                "jax_ms": 1e3 * t["jax"],
                "torch_ms": 1e3 * t["torch"],
                "ratio": t["jax"] / t["torch"],
            }
        )
        print(
            f"  {case.label:18s} JAX {rows[-1]['jax_ms']:8.1f} ms  PyTorch "
            f"{rows[-1]['torch_ms']:8.1f} ms  ratio {rows[-1]['ratio']:.2f}",
            flush=True,
        )
    return rows


def _dtype_ratios() -> list[dict]:
    """JAX step time in fp32, bf16 compute (fp32 params) and fp64, interleaved per model."""
    policies = {
        "fp32": numerics.DtypePolicy("fp32", "fp32"),
        "bf16": numerics.DtypePolicy("fp32", "bf16"),
        "fp64": numerics.DtypePolicy("fp64", "fp64"),
    }
    rows = []
    for case in _selected_cases():
        runs = {name: _jax_step(case, p)[0] for name, p in policies.items()}
        steps = max(1, case.steps_per_round // 2)
        t = _time_interleaved(runs, steps, max(3, _rounds() - 2))
        rows.append(
            {
                "model": case.label,
                **{f"{k}_ms": 1e3 * v for k, v in t.items()},
                "fp64/fp32": t["fp64"] / t["fp32"],
                "bf16/fp32": t["bf16"] / t["fp32"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _run_dtypes_child(threads: int) -> list[dict]:
    """Runs this module with --mode=dtypes in a fresh process (x64 on) and parses its rows."""
    argv = [sys.executable, "-m", "benchmarks.step_time", "--mode=dtypes", f"--threads={threads}"]
    names = [c.label for c in _selected_cases()]
    if not FLAGS.models:
        names = [n for n in names if n in FLAGS.dtype_models]
    argv += [f"--models={','.join(names)}"]
    argv += ["--quick"] if FLAGS.quick else []
    argv += [f"--rounds={FLAGS.rounds}"] if FLAGS.rounds else []
    argv += [f"--xla_flags={','.join(FLAGS.xla_flags)}"] if FLAGS.xla_flags else []
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        raise RuntimeError("dtype child process failed")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _versions() -> dict[str, str]:
    import flax
    import jax
    import jaxlib
    import torch

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _print_markdown(machine: dict, compare: list[dict], dtypes: list[dict]) -> None:
    print(
        f"\nMachine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['threads']} threads used; "
        f"{machine['date']}; " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    )
    if machine["xla_flags"]:
        print(f"XLA_FLAGS: {machine['xla_flags']}")
    print("\n| model | params | JAX ms/step | PyTorch ms/step | JAX/PyTorch |")
    print("|---|---:|---:|---:|---:|")
    for r in compare:
        print(
            f"| {r['model']} | {r['params']:,} | {r['jax_ms']:.1f} | {r['torch_ms']:.1f} | "
            f"{r['ratio']:.2f} |"
        )
    if dtypes:
        print("\n| model (JAX) | fp32 ms | bf16 ms | fp64 ms | bf16/fp32 | fp64/fp32 |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in dtypes:
            print(
                f"| {r['model']} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} | {r['fp64_ms']:.1f} | "
                f"{r['bf16/fp32']:.2f} | {r['fp64/fp32']:.2f} |"
            )


def main(argv):
    del argv
    available = len(os.sched_getaffinity(0))
    threads = FLAGS.threads or available
    dtype_mode = FLAGS.mode == "dtypes"
    policy = numerics.DtypePolicy("fp64" if dtype_mode else "fp32", "fp32")
    numerics.configure(policy, cpu_threads=threads, xla_flags=tuple(FLAGS.xla_flags))
    if dtype_mode:
        _dtype_ratios()
        return

    machine = {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "date": datetime.date.today().isoformat(),
        "versions": _versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_channels_last": FLAGS.torch_channels_last,
    }
    print(f"Train step, batch {BATCH}, fp32, {threads} thread(s); JAX and PyTorch interleaved.")
    compare = _compare(threads)
    dtypes = []
    if FLAGS.dtypes:
        print("JAX dtype ratios (child process, x64 on) ...", flush=True)
        dtypes = _run_dtypes_child(threads)
    _print_markdown(machine, compare, dtypes)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump({"machine": machine, "compare": compare, "dtypes": dtypes}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
