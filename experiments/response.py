r"""Why one rounding grows (eos_jax.studies.response): twin pairs against their forced linear
responses, activation switches counted, the finite-time Lyapunov exponent beside them.

  python -m experiments.response --config=experiments/configs/response_mnist1d.py \
      --workdir=/tmp/response
  python -m experiments.response --config=experiments/configs/response_mnist1d.py \
      --config.num_epochs=2 --config.response.seeds="(0,)" --config.response.lrs="(0.1,)" \
      --workdir=/tmp/response_short
  python -m experiments.response --config=experiments/configs/response_mnist1d.py:forecast \
      --workdir=/tmp/forecast

Rerunning after a crash continues where it stopped and skips finished runs.
"""

from absl import flags

from eos_jax.studies import response
from experiments import common

_CONFIG = common.define_config(
    "experiments/configs/response_mnist1d.py", "Recipe + response settings.", section="response"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go.", required=True)


@common.entry_point
def main(argv):
    del argv  # common.start refuses positional arguments
    planned = response.configure_numerics(_CONFIG.value)
    summary = response.execute(_CONFIG.value, _WORKDIR.value, planned)
    print(summary["table"])
    if "forecast" in summary:
        print(f"\nforecast of the final churn and weight D:\n{summary['forecast']}")
    print(f"results: {_WORKDIR.value}")


if __name__ == "__main__":
    common.start(main)
