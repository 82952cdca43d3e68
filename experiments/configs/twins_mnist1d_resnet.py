"""The headline at the paper's fidelity on MNIST-1D: rounding (update_k) against the seed for
the paper's recipe moved to MNIST-1D (experiments/configs/mnist1d_resnet.py), with every
member also evaluated on 100,000 held-out signals (the distribution-level spread).

  python -m experiments.twins --config=experiments/configs/twins_mnist1d_resnet.py \
      --workdir=/tmp/resnet_headline

24 members per source (--config.twins.members=12 for half the time).
"""

import ml_collections

from eos_jax.studies import twins
from experiments.configs import mnist1d_resnet

HEADLINE = ("update_k", "seed")


def get_config() -> ml_collections.ConfigDict:
    c = mnist1d_resnet.get_config()
    c.dataset_kwargs.heldout_size = 100_000
    c.twins = twins.default_settings("sources")
    c.twins.members = 24
    c.twins.sources = c.twins.compare = HEADLINE
    c.twins.tensor = "stage1_block1/conv1/kernel"  # what ulp_init / bitflip_init would edit
    return c
