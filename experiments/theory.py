r"""The theory experiments: the gradient-descent PDE, its stability bounds, restrained instability.

  python -m experiments.theory --config=experiments/configs/theory_fig1.py --workdir=DIR
  python -m experiments.theory --config=experiments/configs/theory_fig4_left.py \
      --workdir=DIR --config.lrs="(0.01,0.05)"

config.experiment picks one of: heat (Figure 1), linear_pde (Figure 3 / Table 2),
restrained (Figure 4 left), twins (Figure 4 right), phase (phase diagram). What each one does
is in eos_jax/experiments/theory.py; this main switches on float64, runs it and prints the
predicted-vs-observed table.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from eos_jax import numerics
from eos_jax.experiments import theory
from experiments import common


@common.entry_point
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    numerics.configure(theory.POLICY)  # before any array exists
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if config is None:
        raise ValueError("--config is required (e.g. experiments/configs/theory_fig1.py)")
    summary = theory.run(config, workdir)
    print(theory.table_markdown(summary["table"]))
    print(f"results: {workdir}")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "A theory_*.py config.")
    flags.DEFINE_string("workdir", None, "Where results go.", required=True)
    app.run(main)
