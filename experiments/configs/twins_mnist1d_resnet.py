"""The headline at the paper's fidelity on MNIST-1D: rounding (update_k) against the seed for
the paper's recipe moved to MNIST-1D (experiments/configs/mnist1d_resnet.py), with every
member also evaluated on 100,000 held-out signals (the distribution-level spread).

  python -m experiments.twins --config=experiments/configs/twins_mnist1d_resnet.py \
      --workdir=/tmp/resnet_headline
  python -m experiments.twins --config=experiments/configs/twins_mnist1d_resnet.py:factors \
      --workdir=/tmp/resnet_factors

The part after ':' picks the experiment: sources (the headline, default), factors (the
recipe and each ingredient changed alone, 12 + 12 members each: FACTORS) or demo (`make
demo`: 12 + 12 members of the recipe at 20 epochs, the 'epochs x0.5' factor).

The ResNet is resnet1d_8 (one basic block a stage, 28,506 parameters): the depth at which
24 + 24 members train in about 12 minutes on 2 cores (resnet1d_20: 35 minutes; pick it with
--config.model=resnet1d_20). 24 members per source (--config.twins.members=12 for half).
"""

import ml_collections

from eos_jax import recipe
from eos_jax.studies import twins
from experiments.configs import mnist1d_resnet

HEADLINE = ("update_k", "seed")
EPOCHS_HALVED = "num_epochs=20 optimizer.decay_epochs=(4,8,12,16)"

# One ingredient of the paper's recipe changed at a time ('label: overrides').
FACTORS = (
    "no BatchNorm: model_kwargs.use_batch_norm=False",
    "no augmentation: augment=False",
    "no momentum: optimizer.momentum=0.0 optimizer.nesterov=False",
    "lr x0.5: optimizer.lr=0.05",
    "lr x2: optimizer.lr=0.2",
    f"epochs x0.5: {EPOCHS_HALVED}",
    "epochs x2: num_epochs=80 optimizer.decay_epochs=(16,32,48,64)",
    "width x2: model_kwargs.width=2",
    "Swish: model_kwargs.activation='swish'",
)


def get_config(experiment: str = "sources") -> ml_collections.ConfigDict:
    c = mnist1d_resnet.get_config()
    c.model = "resnet1d_8"
    c.dataset_kwargs.heldout_size = 100_000
    if experiment not in ("sources", "factors", "demo"):
        raise ValueError(f"unknown experiment {experiment!r}; known: sources, factors, demo")
    c.twins = twins.default_settings("sources" if experiment == "demo" else experiment)
    c.twins.members = 24 if experiment == "sources" else 12
    if experiment == "demo":
        c = recipe.with_overrides(c, EPOCHS_HALVED, "the demo")
    c.twins.sources = c.twins.compare = HEADLINE
    c.twins.factors = FACTORS
    c.twins.tensor = "stage1_block1/conv1/kernel"  # what ulp_init / bitflip_init would edit
    return c
