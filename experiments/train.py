r"""Trains one recipe and writes metrics, checkpoints and a summary to a work directory.

  python -m experiments.train --config=experiments/configs/default.py --workdir=/tmp/run \
      --config.optimizer.lr=0.05

Re-running with the same --workdir resumes from the latest checkpoint; a finished run is
never overwritten.
"""

import json

from absl import flags

from eos_jax import recipe
from eos_jax.training import build, trainer
from experiments import common

_CONFIG = common.define_config("experiments/configs/default.py", "Recipe.", section="model")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go.", required=True)
_STOP_AT = flags.DEFINE_integer(
    "stop_at_step", None, "Checkpoint and exit at this step without finishing; rerun to resume."
)

common.define_distributed_flags()


@common.entry_point
def main(argv):
    del argv  # common.start refuses positional arguments
    config = _CONFIG.value
    recipe.configure_numerics(config)
    recipe.validate(config, _STOP_AT.value)  # before the data is read: errors name the field
    build.check_names(config)
    common.join_distributed()
    summary = trainer.train_and_evaluate(config, _WORKDIR.value, _STOP_AT.value)
    print(json.dumps(summary.to_json(), indent=2))
    print(f"results: {_WORKDIR.value}")


if __name__ == "__main__":
    common.start(main)
