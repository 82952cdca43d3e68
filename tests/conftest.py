"""Test-session numerics: deterministic flags, fp32 default, x64 only where a test asks.

One persistent compilation cache for the session (a fresh temporary folder, removed at the
end), set in the environment before JAX starts, so that the many fresh processes the suite
starts (experiments' mains, two-process runs, audits) and the tests that build the same tiny
recipe again reuse XLA's compiled programs instead of compiling them again (a tiny
`experiments.train` run: 13 s of CPU cold, 3.6 s warm). A cached program is the same
program: the runs' parameter hashes, and the audit's (1 thread, no FMA), are the same with
and without it (checked on the project's 2-core CPU); XLA flags are part of its key. An
explicit JAX_COMPILATION_CACHE_DIR is kept.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="eos_jax_tests_jax_cache_")
    atexit.register(shutil.rmtree, _CACHE, True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

from eos_jax import numerics  # noqa: E402

# The mains restart once to set glibc's malloc (numerics.restart_with_malloc_tunables); with
# the setting in the environment the suite's many fresh processes start once.
os.environ["GLIBC_TUNABLES"] = numerics.with_malloc_tunables(os.environ.get("GLIBC_TUNABLES", ""))

# In case JAX was imported before this file (a plugin): the same settings, in this process.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1)),
)

numerics.configure(numerics.DtypePolicy("fp32", "fp32"), matmul_precision="highest")
