"""Figure 3 / Table 2: the transitioning-region linear PDE over alpha, lr = 1e-8, 500 steps."""

from experiments.configs.theory_base import one_layer_config


def get_config():
    c = one_layer_config("linear_pde")
    c.lr = 1e-8
    c.steps = 500
    c.alphas = (1.1e7, 1.2e7, 1.3e7, 1.9e8, 2.0e8, 2.1e8, 2.2e8)
    c.normalization = "sum"  # unnormalised sums over the 225x225 valid positions
    return c
