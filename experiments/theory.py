r"""The theory experiments: the gradient-descent PDE, its stability bounds, restrained instability.

  python -m experiments.theory --config=experiments/configs/theory_fig1.py --workdir=DIR
  python -m experiments.theory --config=experiments/configs/theory_fig4_left.py \
      --workdir=DIR --config.lrs="(0.01,0.05)"

config.experiment picks one of: heat (Figure 1), linear_pde (Figure 3 / Table 2),
restrained (Figure 4 left), twins (Figure 4 right), phase (phase diagram). What each one does
is in eos_jax/studies/theory.py; this main switches on float64, runs it and prints the
predicted-vs-observed table.
"""

from __future__ import annotations

from absl import flags

from eos_jax import numerics
from eos_jax.studies import theory
from experiments import common

_CONFIG = common.define_config(
    "experiments/configs/theory_fig1.py", "A theory_*.py config.", section="experiment"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go.", required=True)


@common.entry_point
def main(argv):
    del argv  # common.start refuses positional arguments
    numerics.configure(theory.POLICY)  # before any array exists
    config, workdir = _CONFIG.value, _WORKDIR.value
    summary = theory.execute(config, workdir)
    print(theory.table_markdown(summary["table"]))
    print(f"results: {workdir}")


if __name__ == "__main__":
    common.start(main)
