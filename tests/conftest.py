"""Test-session numerics: deterministic flags, fp32 default, x64 only where a test asks."""

from eos_jax import numerics

numerics.configure(numerics.DtypePolicy("fp32", "fp32"), matmul_precision="highest")
