"""Activation functions shared by the model zoo and the one-layer theory model."""

from __future__ import annotations

import jax


def swish(z, beta: float = 1.0):
    """s(z) = z * sigmoid(beta * z); beta = 1 is SiLU, the paper's ResNet uses beta = 5."""
    return z * jax.nn.sigmoid(beta * z)
