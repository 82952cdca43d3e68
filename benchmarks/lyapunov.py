r"""What carrying a tangent costs: the tangent-carrying step (analysis.lyapunov.TangentStep:
the plain step plus one JVP and a renormalisation) against the plain step, on the MNIST-1D
recipe (experiments/configs/mnist1d.py: 1-D CNN, batch 128, SGD momentum 0.9).

  python -m benchmarks.lyapunov [--repeats=200]

Both jitted and warmed up; calls alternate in one process (the machine is shared: read the
ratio, not the absolute times). Target of issue 9: ratio <= 2.
"""

import statistics
import time

import jax
from absl import app, flags

from eos_jax import recipe
from eos_jax.analysis import lyapunov
from eos_jax.training import build, steps
from experiments.configs import mnist1d

_REPEATS = flags.DEFINE_integer("repeats", 200, "Timed calls of each step (median reported).")


def main(argv):
    del argv
    config = mnist1d.get_config()
    recipe.configure_numerics(config)
    dataset = build.dataset(config)
    model = build.model(config, dataset)
    tx = build.optimizer(config, mnist1d.STEPS_PER_EPOCH)
    batch = jax.device_put(build.stream(config, dataset).batch(0))
    plain_step = jax.jit(steps.make_train_step(model, tx, config.loss))
    carrying = lyapunov.tangent_step()(model, tx, config.loss)
    tangent_step = jax.jit(carrying)
    state = steps.init_state(model, tx, 0, dataset.image_shape)
    tangent_state = carrying.init(state)
    jax.block_until_ready((plain_step(state, batch), tangent_step(tangent_state, batch)))
    plain_t, tangent_t = [], []
    for _ in range(_REPEATS.value):
        t = time.perf_counter()
        jax.block_until_ready(plain_step(state, batch))
        plain_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(tangent_step(tangent_state, batch))
        tangent_t.append(time.perf_counter() - t)
    p, q = statistics.median(plain_t), statistics.median(tangent_t)
    print("| step | ms (median) |")
    print("|---|---|")
    print(f"| plain | {1e3 * p:.2f} |")
    print(f"| tangent-carrying | {1e3 * q:.2f} |")
    print(f"tangent / plain: {q / p:.2f} (target <= 2.0); {jax.default_backend()}")


if __name__ == "__main__":
    app.run(main)
