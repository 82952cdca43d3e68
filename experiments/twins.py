r"""Lockstep twin experiments (eos_jax.experiments.twins): rounding vs stochastic divergence.

  python -m experiments.twins --config=experiments/configs/twins_embedded.py:table1 \
      --workdir=/tmp/t1
  python -m experiments.twins --config=experiments/configs/twins_embedded.py:sources \
      --config.twins.sources="('ulp_init',)" --config.twins.member_values="(0, 1, 4)" \
      --workdir=/tmp/ulp

Rerunning after a crash continues where it stopped and skips finished ensembles.
"""

from absl import app, flags
from ml_collections import config_flags

from eos_jax import numerics
from eos_jax.experiments import twins
from experiments import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/twins_embedded.py", "Recipe + twins settings."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go.", required=True)


def configure(config) -> None:
    """The config's numerics, with x64 on when any member of any ensemble computes in fp64."""
    common.configure_numerics(config)
    if twins.needs_x64(config):
        numerics.enable_x64()


@common.entry_point
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    configure(_CONFIG.value)
    summary = twins.run(_CONFIG.value, _WORKDIR.value)
    print(summary["table"])
    print(f"results: {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main)
