"""eos_jax: rounding-induced instability of training, the gradient-descent PDE and the Edge of
Stability, in JAX. Library only: no flags, no global side effects (see eos_jax.numerics)."""

__version__ = "0.1.0"
