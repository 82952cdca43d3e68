r"""Lockstep twin experiments (eos_jax.studies.twins): rounding vs stochastic divergence.

  python -m experiments.twins --config=experiments/configs/twins_embedded.py:table1 \
      --workdir=/tmp/t1
  python -m experiments.twins --config=experiments/configs/twins_embedded.py:sources \
      --config.twins.sources="('ulp_init',)" --config.twins.member_values="(0, 1, 4)" \
      --workdir=/tmp/ulp

Rerunning after a crash continues where it stopped and skips finished ensembles.
"""

from absl import flags

from eos_jax.studies import twins
from experiments import common

_CONFIG = common.define_config(
    "experiments/configs/twins_embedded.py", "Recipe + twins settings.", section="twins"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go.", required=True)

common.define_distributed_flags()


@common.entry_point
def main(argv):
    del argv  # common.start refuses positional arguments
    planned = twins.configure_numerics(_CONFIG.value)
    common.join_distributed()
    summary = twins.execute(_CONFIG.value, _WORKDIR.value, planned)
    print(summary["table"])
    if summary.get("verdict"):
        print(summary["verdict"])
    print(f"results: {_WORKDIR.value}")


if __name__ == "__main__":
    common.start(main)
