"""What every experiment main shares: numerics from the config, and one-line errors."""

from __future__ import annotations

import functools
import sys

from absl import flags, logging

from eos_jax import config as recipe_config
from eos_jax import numerics, results
from eos_jax.training import checkpoint, trainer

# Failures a user can cause and fix; anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (
    ValueError,  # bad config values, unknown names (numerics.NumericsError included)
    FileNotFoundError,  # e.g. a dataset that is not prepared
    results.WorkdirError,
    checkpoint.CheckpointError,
    trainer.TrainingDiverged,
)


def configure_numerics(config) -> numerics.DtypePolicy:
    """Applies config.numerics before any array exists; returns the dtype policy."""
    n = config.numerics
    policy = recipe_config.dtype_policy(config)
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
        except EXPECTED_ERRORS as e:
            logging.debug("full traceback", exc_info=True)
            print(f"error: {results.first_line(e)}", file=sys.stderr)
            sys.exit(1)

    return wrapped
