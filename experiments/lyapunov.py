r"""Lyapunov exponents vs twins (eos_jax.studies.lyapunov): the finite-time exponent of
training beside the measured growth of update_k twins' distance, per learning rate.

  python -m experiments.lyapunov --config=experiments/configs/lyapunov_mnist1d.py \
      --workdir=/tmp/lyap

Rerunning after a crash continues where it stopped and skips finished runs.
"""

from absl import flags

from eos_jax import recipe
from eos_jax.studies import lyapunov
from experiments import common

_CONFIG = common.define_config(
    "experiments/configs/lyapunov_mnist1d.py", "Recipe + lyapunov settings."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go.", required=True)


@common.entry_point
def main(argv):
    del argv  # common.run refuses positional arguments
    recipe.configure_numerics(_CONFIG.value)
    summary = lyapunov.execute(_CONFIG.value, _WORKDIR.value)
    print(summary["table"])
    print(f"results: {_WORKDIR.value}")


if __name__ == "__main__":
    common.start(main)
