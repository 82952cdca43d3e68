"""Numerics controls: dtype names, fp64 switch timing, XLA flags, thread count, fingerprint."""

import json
import os
import platform
import subprocess
import sys

import jax
import pytest

from eos_jax import numerics


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(
        numerics.NumericsError, match="unknown dtype 'fp16'; allowed: bf16, fp32, fp64"
    ):
        numerics.DtypePolicy("fp16", "fp32")


def test_policy_dtypes():
    policy = numerics.DtypePolicy("fp64", "bf16")
    assert policy.needs_x64 and str(policy.compute_dtype.dtype) == "bfloat16"
    assert not numerics.DtypePolicy().needs_x64


def test_fp64_before_arrays_gives_float64_and_after_arrays_is_refused():
    ok = run_python(
        "from eos_jax import numerics; import jax.numpy as jnp\n"
        "numerics.configure(numerics.DtypePolicy('fp64','fp64'))\n"
        "print(jnp.ones(2).dtype)"
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "float64"
    late = run_python(
        "from eos_jax import numerics; import jax.numpy as jnp\n"
        "x = jnp.ones(2)\n"
        "numerics.configure(numerics.DtypePolicy('fp64','fp64'))"
    )
    assert late.returncode != 0 and "fp64 requested after 32-bit arrays were created" in late.stderr


def test_flags_and_threads_after_backend_start_are_refused():
    import jax.numpy as jnp

    jnp.ones(1)  # the backend is running in this process
    with pytest.raises(numerics.NumericsError, match="before the JAX backend starts"):
        numerics.set_xla_flags(("--xla_cpu_enable_fast_math=false",))
    with pytest.raises(numerics.NumericsError, match="cpu_threads=0 not in"):
        numerics.set_cpu_threads(0)
    if len(os.sched_getaffinity(0)) > 1:
        with pytest.raises(numerics.NumericsError, match="before the JAX backend starts"):
            numerics.set_cpu_threads(1)


def test_matmul_precision_is_applied_and_checked():
    with pytest.raises(numerics.NumericsError, match="unknown matmul_precision 'fastest'"):
        numerics.configure(numerics.DtypePolicy(), matmul_precision="fastest")
    out = run_python(
        "from eos_jax import numerics; import jax\n"
        "numerics.configure(numerics.DtypePolicy(), matmul_precision='high', cpu_threads=1)\n"
        "import os; print(jax.config.jax_default_matmul_precision, len(os.sched_getaffinity(0)))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["high", "1"]


def test_fingerprint_records_what_decides_the_bits():
    fp = numerics.fingerprint(numerics.DtypePolicy(), {"lr": 0.1})
    json.dumps(fp)
    assert fp["param_dtype"] == "fp32" and fp["backend"] == jax.default_backend()
    assert fp["cpu"]["machine"] and fp["prng_impl"] and fp["versions"]["orbax.checkpoint"]
    assert "--xla_gpu_deterministic_ops=true" in fp["xla_flags"]
    assert fp["cpu_threads"] >= 1 and fp["versions"]["jax"]
    assert (
        fp["config_hash"] == numerics.config_hash({"lr": 0.1}) != numerics.config_hash({"lr": 0.2})
    )

    one = numerics.machine_line(fp | {"cpu_threads": 1})
    two = numerics.machine_line(fp | {"cpu_threads": 2})
    assert ", 1 thread, XLA_FLAGS=" in one and ", 2 threads, XLA_FLAGS=" in two


def test_importing_the_library_creates_no_arrays():
    out = run_python(
        "import eos_jax.numerics, eos_jax.bits, eos_jax.results, eos_jax.training.optim\n"
        "import eos_jax.training.steps, eos_jax.models, eos_jax.data, eos_jax.training.trainer\n"
        "import eos_jax.recipe, eos_jax.studies.twins, eos_jax.studies.theory\n"
        "import eos_jax.analysis.curvature, eos_jax.analysis.linearisation\n"
        "from jax._src import xla_bridge; print(xla_bridge.backends_are_initialized())"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES is glibc's")
def test_a_main_restarts_once_with_the_malloc_tunables_keeping_the_users():
    """common.start executes the program again in its process (the same pid), once, with the
    malloc tunables added to those the user set."""
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
    code = (
        "import os; from experiments import common; print('start', os.getpid(), flush=True); "
        "common.start(lambda argv: print('main', os.getpid(), os.environ['GLIBC_TUNABLES']))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    pid = process.pid
    assert stdout.decode().splitlines() == [
        f"start {pid}",
        f"start {pid}",
        f"main {pid} glibc.malloc.tcache_count=7:{numerics.MALLOC_TUNABLES}",
    ]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.slow  # two fresh processes compiling an 8-member ResNet (~45 s on 2 cores)
def test_reused_freed_memory_saves_page_faults_and_keeps_the_bits():
    """An 8-member ensemble of the MNIST-1D ResNet recipe (whose convolutions take scratch
    buffers larger than a glibc thread arena) with glibc's malloc set as the mains set it
    and with its defaults, each in its own process (benchmarks.freed_memory, one round): the
    same state bit for bit, and far fewer pages faulted in a step."""
    argv = [sys.executable, "-m", "benchmarks.freed_memory", "--steps=2", "--rounds=1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    arms = {row["arm"]: row for row in rows}
    assert arms["reuse"]["state hash"] == arms["default"]["state hash"]
    assert arms["reuse"]["minor faults/step"] < arms["default"]["minor faults/step"] / 4
