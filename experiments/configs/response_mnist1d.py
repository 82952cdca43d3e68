"""Twin pairs against their forced linear responses on the MNIST-1D recipe, shortened to 10
epochs at constant lr.

  python -m experiments.response --config=experiments/configs/response_mnist1d.py \
      --workdir=/tmp/response

Per activation (relu, swish, gelu), source (update_k k = 1, 3; ulp_init one ulp of
conv1/kernel), lr (0.05, 0.1) and seed (0, 1, 2): one twin pair, observed every step.

  python -m experiments.response --config=experiments/configs/response_mnist1d.py:forecast \
      --workdir=/tmp/forecast

':forecast': the same pairs, their linear response and switches observed over the first
epoch (62 steps) alone, trained to the end of the 10 epochs: the forecast of the final churn
and weight distance from that first epoch (forecast.md).

  python -m experiments.response --config=experiments/configs/response_mnist1d.py:adam \
      --workdir=/tmp/response_adam

':adam': as ':forecast', with Adam (lr ADAM_LR, the moments' defaults, coupled decay 5e-4)
in place of SGD, for ReLU and Swish update_k pairs: does Adam's preconditioner amplify or
damp a rounding against SGD's pairs of the same activation and seed?
"""

import ml_collections

from eos_jax.studies import response
from experiments.configs import mnist1d

EXPERIMENTS = ("full", "forecast", "adam")
ADAM_LR = 0.001


def shortened(c: ml_collections.ConfigDict, experiment: str, steps_per_epoch: int):
    """Recipe `c` as a response study: 10 epochs at constant lr, the default response
    settings, and for 'forecast' the first epoch alone observed."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")
    c.num_epochs = 10
    c.optimizer.decay_epochs = ()  # constant lr: one family of linearised maps per run
    c.checkpoint_every_steps = 5 * steps_per_epoch
    c.response = response.default_settings()
    if experiment in ("forecast", "adam"):
        c.response.observed_steps = steps_per_epoch
    if experiment == "adam":
        c.optimizer.update(name="adam", momentum=0.0, nesterov=False)
        c.response.update(lrs=(ADAM_LR,), activations=("relu", "swish"), sources=("update_k",))
    return c


def get_config(experiment: str = "full") -> ml_collections.ConfigDict:
    return shortened(mnist1d.get_config(), experiment, mnist1d.STEPS_PER_EPOCH)
