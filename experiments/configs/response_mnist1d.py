"""Twin pairs against their forced linear responses on the MNIST-1D recipe, shortened to 10
epochs at constant lr.

  python -m experiments.response --config=experiments/configs/response_mnist1d.py \
      --workdir=/tmp/response

Per activation (relu, swish), source (update_k k = 1, 3; ulp_init one ulp of conv1/kernel),
lr (0.05, 0.1) and seed (0, 1, 2): one twin pair, observed every step.
"""

import ml_collections

from eos_jax.studies import response
from experiments.configs import mnist1d


def get_config() -> ml_collections.ConfigDict:
    c = mnist1d.get_config()
    c.num_epochs = 10
    c.optimizer.decay_epochs = ()  # constant lr: one family of linearised maps per run
    c.checkpoint_every_steps = 5 * mnist1d.STEPS_PER_EPOCH
    c.response = response.default_settings()
    return c
