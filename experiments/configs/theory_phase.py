"""Phase diagram of the one-layer CNN: observed class over a (lr, alpha) grid vs the bounds."""

from experiments.configs.theory_base import one_layer_config


def get_config():
    c = one_layer_config("phase")
    c.alphas = (5.0, 10.0, 20.0, 40.0, 80.0)
    c.lrs = (0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.14, 0.2, 0.3, 0.45)
    c.steps = 600
    return c
