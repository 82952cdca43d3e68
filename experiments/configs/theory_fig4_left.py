"""Figure 4 left: restrained instability of the nonlinear one-layer CNN, alpha = 20."""

from experiments.configs.theory_base import one_layer_config


def get_config():
    c = one_layer_config("restrained")
    c.alpha = 20.0
    c.lrs = (0.01, 0.03, 0.05, 0.07, 0.09, 0.1, 0.11, 0.13)
    c.steps = 1000
    return c
