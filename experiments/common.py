"""What every experiment main shares: numerics from the config, and one-line errors."""

from __future__ import annotations

import functools
import sys

from absl import flags, logging

from eos_jax import numerics


def configure_numerics(config) -> numerics.DtypePolicy:
    """Applies config.numerics before any array exists; returns the dtype policy."""
    n = config.numerics
    policy = numerics.DtypePolicy(n.param_dtype, n.compute_dtype)
    numerics.configure(
        policy, n.matmul_precision, n.get("cpu_threads"), n.deterministic, tuple(n.xla_flags)
    )
    return policy


def entry_point(main):
    """Wraps an absl main: quiet library logs, and expected failures (bad input, finished
    workdir, divergence) become one line on stderr and exit status 1."""

    @functools.wraps(main)
    def wrapped(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.ERROR)  # orbax logs every save; tfds warns freely
        try:
            return main(argv)
        except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError) as e:
            logging.debug("full traceback", exc_info=True)
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)

    return wrapped
