"""Figure 1: forward Euler on the 1-D heat equation, stable at dt = 0.4, unstable at 0.8."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "heat"
    c.points = 31  # dx = 1, fixed zero ends, tent initial condition
    c.dts = (0.4, 0.8)
    c.steps = 20
    c.shown_steps = (0, 5, 10, 15, 20)
    c.quiet = False  # True: no progress bar
    return c
