"""Figure 4 right: k = 1 vs k = 3 twins of the one-layer CNN, relative-L1 divergence."""

from experiments.configs.theory_base import one_layer_config


def get_config():
    c = one_layer_config("twins")
    c.alpha = 20.0
    c.lrs = (0.01, 0.03, 0.05, 0.07, 0.09)
    c.steps = 1000
    c.k_pair = (1, 3)
    c.window = 100  # moving-average length
    c.amplified_level = 1e-3  # divergence above this counts as amplified (rounding is ~1e-16)
    return c
