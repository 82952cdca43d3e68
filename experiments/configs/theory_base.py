"""Shared settings of the theory configs (not a config itself): the one-layer CNN setup.

docs/paper.md, section 4: a 256x256 +-1 checkerboard, a 32x32 kernel drawn by
np.random.RandomState(7).randn(32, 32), label 1, swish with beta = 1, float64 full-batch GD.
The paper does not state the init's std; init_std = 1 (randn unscaled) reproduces the
numbers expected there (equilibrium loss 0.29149, response 3.865, restrained loss peaks 1-3).
"""

import ml_collections


def one_layer_config(experiment: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = experiment
    c.image_size = 256
    c.kernel_size = 32
    c.seed = 7
    c.init_std = 1.0
    c.beta = 1.0
    c.label = 1.0
    c.quiet = False  # True: no progress bar
    return c
