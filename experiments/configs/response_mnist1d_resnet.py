"""Twin pairs against their forced linear responses on the paper-fidelity ResNet
(experiments/configs/mnist1d_resnet.py: BatchNorm, Nesterov momentum, weight decay, random
shifts) at the depth of the headline's 24 + 24 members (resnet1d_8), shortened to 10 epochs
at constant lr, as response_mnist1d.py does for the CNN.

  python -m experiments.response \
      --config=experiments/configs/response_mnist1d_resnet.py:forecast --workdir=/tmp/rforecast

Per activation (relu; swish with the ResNet's beta = 5, the paper's; gelu), source
(update_k k = 1, 3; ulp_init one ulp of stage1_block1/conv1/kernel, the tensor the twins
config edits), lr (0.05, 0.1) and seed (0, 1, 2): one twin pair. ':forecast' (default)
observes the first epoch (63 steps), ':full' every step.
"""

import ml_collections

from experiments.configs import mnist1d_resnet, response_mnist1d


def get_config(experiment: str = "forecast") -> ml_collections.ConfigDict:
    c = mnist1d_resnet.get_config()
    c.model = "resnet1d_8"
    c = response_mnist1d.shortened(c, experiment, mnist1d_resnet.STEPS_PER_EPOCH)
    c.response.tensor = "stage1_block1/conv1/kernel"
    return c
