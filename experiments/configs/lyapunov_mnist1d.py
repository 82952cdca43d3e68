"""Lyapunov exponents vs twins on the MNIST-1D recipe, shortened to 10 epochs at constant lr.

  python -m experiments.lyapunov --config=experiments/configs/lyapunov_mnist1d.py \
      --workdir=/tmp/lyap

Per lr in 0.025, 0.05, 0.08, 0.1: update_k twins k = 1, 3; member 0 carries a tangent.
"""

import ml_collections

from eos_jax.studies import lyapunov
from experiments.configs import mnist1d


def get_config() -> ml_collections.ConfigDict:
    c = mnist1d.get_config()
    c.num_epochs = 10
    c.optimizer.decay_epochs = ()  # constant lr: one linearised map family per run
    c.lyapunov = lyapunov.default_settings()
    c.lyapunov.every_steps = mnist1d.STEPS_PER_EPOCH // 2
    return c
