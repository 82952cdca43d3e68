r"""Compile time of a model's init: the zoo's kernels drawn flat and reshaped
(models.layers.drawn_flat) against Flax's and jax's initializers drawing each kernel in its
own shape.

  python -m benchmarks.init_compile [--models=small_cnn,resnet1d_20,resnet20] [--rounds=3]

The two arms give the same bits with threefry keys (checked here on each model's variables,
and in tests/test_models.py), so the only difference is the program XLA compiles. Each round
lowers and compiles a fresh jit of `model.init` per arm, the order reversed every round;
prints the seconds per arm, then the median ratio shaped / flat per model.
"""

import contextlib
import functools
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from eos_jax import bits, numerics
from eos_jax.models import create_model, layers

_MODELS = flags.DEFINE_list("models", ["small_cnn", "resnet1d_20", "resnet20"], "Zoo models.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds; each compiles both arms once.")


@contextlib.contextmanager
def shaped_draws():
    """The zoo's initializers replaced by Flax's / jax's, which draw in the kernel's shape."""
    flat = layers.he_fan_out_normal, layers.symmetric_uniform
    layers.he_fan_out_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    layers.symmetric_uniform = lambda bound: functools.partial(
        jax.random.uniform, minval=-bound, maxval=bound
    )
    try:
        yield
    finally:
        layers.he_fan_out_normal, layers.symmetric_uniform = flat


def compile_init(name: str, shaped: bool):
    """(seconds to lower and compile a fresh jit of the init, hash of the variables)."""
    with shaped_draws() if shaped else contextlib.nullcontext():
        model = create_model(name)
        x = jnp.zeros((1, 40, 1) if "1d" in name else (1, 32, 32, 3))
        init = jax.jit(functools.partial(model.init, train=False))
        t0 = time.perf_counter()
        compiled = init.lower(jax.random.key(0), x).compile()
        seconds = time.perf_counter() - t0
    return seconds, bits.tree_hash(compiled(jax.random.key(0), x))


def main(argv):
    del argv
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"))
    print(numerics.machine_line(numerics.fingerprint(numerics.DtypePolicy())))
    for name in _MODELS.value:
        times = {True: [], False: []}
        hashes = set()
        for r in range(_ROUNDS.value):
            for shaped in (True, False) if r % 2 == 0 else (False, True):
                seconds, digest = compile_init(name, shaped)
                times[shaped].append(seconds)
                hashes.add(digest)
                print(f"{name} round {r} {'shaped' if shaped else 'flat'}: {seconds:.2f} s")
        ratio = statistics.median(s / f for s, f in zip(times[True], times[False], strict=True))
        same = "the same bits" if len(hashes) == 1 else "DIFFERENT BITS"
        print(f"{name}: shaped / flat compile time {ratio:.2f} (median of {_ROUNDS.value}); {same}")


if __name__ == "__main__":
    app.run(main)
