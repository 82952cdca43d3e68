r"""Edge-of-Stability sweeps (eos_jax.studies.eos): does the data-loss sharpness of
full-batch training settle at the stability threshold c / lr - wd?

  python -m experiments.eos --config=experiments/configs/eos_digits.py:plateau --workdir=/tmp/eos
  python -m experiments.eos --config=experiments/configs/eos_digits.py:momentum \
      --config.eos.runs="('optimizer.lr=0.05 optimizer.momentum=0.5 num_steps=1000',)" \
      --workdir=/tmp/eos_mom

Rerunning after a crash continues where it stopped and skips finished runs.
"""

from absl import flags

from eos_jax import recipe
from eos_jax.studies import eos
from experiments import common

_CONFIG = common.define_config(
    "experiments/configs/eos_digits.py", "Recipe + eos settings.", section="eos"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go.", required=True)


@common.entry_point
def main(argv):
    del argv  # common.start refuses positional arguments
    recipe.configure_numerics(_CONFIG.value)
    summary = eos.execute(_CONFIG.value, _WORKDIR.value)
    print(summary["table"])
    print(f"results: {_WORKDIR.value}")


if __name__ == "__main__":
    common.start(main)
