"""Explicit numerics: dtype policy, determinism flags, thread count, run fingerprint.

Everything that can change the bits of a run is decided here, once, before the JAX backend
starts, and recorded in a fingerprint saved beside the run's results.

Call order in an entry point (the mains do this through
``eos_jax.recipe.configure_numerics(config)``)::

    policy = numerics.DtypePolicy("fp32", "fp32")  # param dtype, compute dtype
    numerics.configure(policy, matmul_precision="highest", cpu_threads=2)
    ...  # only now create arrays
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import importlib
import json
import os
import platform
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp

from eos_jax import results

DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32, "fp64": jnp.float64}
MATMUL_PRECISIONS = ("default", "high", "highest")
# Flags that make GPU kernels deterministic; harmless on other backends.
DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true",)
# XLA:CPU contracts a*b + c into one FMA on machines with AVX2/AVX-512 (one rounding, not
# two). Capping the instruction set at AVX removes FMA, for bit-parity with NumPy (slower).
NO_FMA_XLA_FLAGS = ("--xla_cpu_max_isa=AVX",)


class NumericsError(ValueError):
    """A numerics request that cannot be honoured (bad name, or asked for too late)."""


def dtype_from_name(name: str) -> Any:
    """Maps 'bf16' | 'fp32' | 'fp64' to a jnp dtype; anything else is a clear error."""
    if name not in DTYPES:
        raise NumericsError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class DtypePolicy:
    """Parameter dtype (what is stored and updated) and compute dtype (what layers run in)."""

    param: str = "fp32"
    compute: str = "fp32"

    def __post_init__(self):
        dtype_from_name(self.param)
        dtype_from_name(self.compute)

    @property
    def param_dtype(self):
        return dtype_from_name(self.param)

    @property
    def compute_dtype(self):
        return dtype_from_name(self.compute)

    @property
    def needs_x64(self) -> bool:
        return "fp64" in (self.param, self.compute)


def _backend_started() -> bool:
    from jax._src import xla_bridge  # private, but the only way to ask without starting it

    return xla_bridge.backends_are_initialized()


def enable_x64() -> None:
    """Switches on 64-bit floats; refuses once arrays exist (they would stay 32-bit)."""
    if jax.config.jax_enable_x64:
        return
    if _backend_started() and jax.live_arrays():
        raise NumericsError(
            "fp64 requested after 32-bit arrays were created; call numerics.configure(...) "
            "before creating any array (or set JAX_ENABLE_X64=1)"
        )
    jax.config.update("jax_enable_x64", True)


def set_xla_flags(flags: tuple[str, ...]) -> None:
    """Adds XLA flags to XLA_FLAGS; refuses if the backend already started without them."""
    current = os.environ.get("XLA_FLAGS", "").split()
    missing = [f for f in flags if f not in current]
    if not missing:
        return
    if _backend_started():
        raise NumericsError(
            f"XLA flags {missing} must be set before the JAX backend starts; "
            "call numerics.configure(...) first thing in the program"
        )
    os.environ["XLA_FLAGS"] = " ".join(current + missing)


def set_cpu_threads(n: int | None) -> None:
    """Pins the process to the first n CPUs, which fixes XLA:CPU's thread pool size.

    Reductions are split across threads, so 1 and 2 threads give different bits: the count
    is part of a run's numerics and is recorded in the fingerprint.
    """
    if n is None:
        return
    available = sorted(os.sched_getaffinity(0))
    if not 1 <= n <= len(available):
        raise NumericsError(f"cpu_threads={n} not in [1, {len(available)}] (CPUs available)")
    if n == len(available):
        return
    if _backend_started():
        raise NumericsError("cpu_threads must be set before the JAX backend starts")
    os.sched_setaffinity(0, set(available[:n]))


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def reuse_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse instead of returning it to the kernel.

    Each call of an XLA:CPU program takes scratch memory from the heap in its worker
    threads; for an 8-member MNIST-1D ResNet ensemble that is a 75 MB block a step (strace).
    glibc serves a block over 64 MB (a thread arena's limit) with a fresh mmap, so the
    kernel faults in and zeroes every page again on each step: 18,000 page faults a step,
    and a step 1.3x slower (benchmarks/freed_memory.py). One arena, no mmap and no trimming
    let the freed block be reused. Changes speed and peak memory, not bits
    (tests/test_numerics.py). Must run before the backend's threads allocate
    (numerics.configure calls it); returns False where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(libc.mallopt(key, value) == 1 for key, value in settings)


# reuse_freed_memory's settings as glibc tunables, which glibc reads as the process starts,
# before any thread exists.
MALLOC_TUNABLES = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
)


def with_malloc_tunables(tunables: str) -> str:
    """A GLIBC_TUNABLES value with MALLOC_TUNABLES added (once)."""
    if MALLOC_TUNABLES in tunables:
        return tunables
    return f"{tunables}:{MALLOC_TUNABLES}" if tunables else MALLOC_TUNABLES


def restart_with_malloc_tunables() -> None:
    """Executes this program again, in this process, with MALLOC_TUNABLES added to
    GLIBC_TUNABLES; nothing where they are there already or the C library is not glibc.

    reuse_freed_memory alone did not hold for a whole 80-epoch study: after 14 minutes one
    XLA:CPU worker thread mapped a fresh 75 MB block every few steps again; started with the
    tunables, the study took a few page faults a step at most (benchmarks/README.md). The
    mains call this first (experiments.common.start): the restart costs their imports once.
    """
    current = os.environ.get("GLIBC_TUNABLES", "")
    if platform.libc_ver()[0] != "glibc" or MALLOC_TUNABLES in current:
        return
    os.environ["GLIBC_TUNABLES"] = with_malloc_tunables(current)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def configure(
    policy: DtypePolicy,
    matmul_precision: str = "highest",
    cpu_threads: int | None = None,
    deterministic: bool = True,
    xla_flags: tuple[str, ...] = (),
    reuse_memory: bool = True,
) -> None:
    """Applies a run's numerics; call before any array is created.

    xla_flags: extra flags, e.g. NO_FMA_XLA_FLAGS; all flags end up in the fingerprint.
    reuse_memory: reuse_freed_memory() (speed only; benchmarks/freed_memory.py).
    """
    if matmul_precision not in MATMUL_PRECISIONS:
        raise NumericsError(
            f"unknown matmul_precision {matmul_precision!r}; "
            f"allowed: {', '.join(MATMUL_PRECISIONS)}"
        )
    set_xla_flags((DETERMINISTIC_XLA_FLAGS if deterministic else ()) + tuple(xla_flags))
    set_cpu_threads(cpu_threads)
    if reuse_memory and not _backend_started():
        reuse_freed_memory()
    if policy.needs_x64:
        enable_x64()
    jax.config.update("jax_default_matmul_precision", matmul_precision)


def config_hash(config: Any) -> str:
    """sha256 of a config's canonical JSON (ml_collections ConfigDict or plain dict)."""
    text = json.dumps(results.as_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _git(*args: str) -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu() -> dict[str, Any]:
    """CPU model and the instruction-set features that change XLA:CPU's arithmetic (FMA)."""
    info = {"machine": platform.machine(), "model": None, "features": []}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and info["model"] is None:
            info["model"] = value.strip()
        if key.strip() == "flags" and not info["features"]:
            flags = set(value.split())
            info["features"] = sorted(flags & {"avx", "avx2", "fma", "avx512f", "sse4_2"})
    return info


def machine_line(fingerprint: dict[str, Any]) -> str:
    """A fingerprint in one line, to print beside any number it produced: CPU model and
    features, threads, XLA flags, backend and jax version."""
    cpu, threads = fingerprint["cpu"], fingerprint["cpu_threads"]
    return (
        f"{cpu['model']} ({', '.join(cpu['features'])}), {threads} thread{'s' * (threads != 1)}, "
        f"XLA_FLAGS='{fingerprint['xla_flags']}', {fingerprint['backend']}, "
        f"jax {fingerprint['versions']['jax']}"
    )


VERSIONED_MODULES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes", "orbax.checkpoint")


def _version(module_name: str) -> str | None:
    try:
        return importlib.import_module(module_name).__version__
    except (ImportError, AttributeError):
        return None


def fingerprint(
    policy: DtypePolicy, config: Any = None, mesh: dict | None = None
) -> dict[str, Any]:
    """Everything that decides a run's bits, as a JSON-ready dict. mesh: the device mesh's
    description (training.mesh.describe): its shape decides how sums are split."""
    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {m: _version(m) for m in VERSIONED_MODULES},
        "backend": jax.default_backend(),
        "cpu": _cpu(),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "device_count": len(devices),
        "mesh": mesh,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_threads": len(os.sched_getaffinity(0)),
        "x64": bool(jax.config.jax_enable_x64),
        "param_dtype": policy.param,
        "compute_dtype": policy.compute,
        "matmul_precision": jax.config.jax_default_matmul_precision,
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "config_hash": config_hash(config) if config is not None else None,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "argv": sys.argv,
    }
