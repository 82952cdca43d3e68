r"""What sharpness tracking costs, in gradients' time: a Hessian-vector product made fresh
(forward-over-reverse every time) and reused (the gradient map linearised once per point),
one whole warm-started measurement, and the products per warm-started Lanczos call (k = 1)
along a full-batch GD run.

  python -m benchmarks.curvature [--steps=1500 --every=11 --repeats=20]

Models: the EoS recipe (experiments/configs/eos_digits.py: fc-tanh MLP (200, 200), MSE, the
first 1,000 digits in one chunk) and the MNIST-1D 1-D CNN (experiments/configs/mnist1d.py,
cross-entropy, the first 1,000 signals). Timings alternate the kinds of call in one
process (the machine is shared: read the ratios, not the absolute times). The warm
measurement starts from the top eigenvector at a point one GD step away, as the Sharpness
observer does between two measurements. The run is GD at 2/lr = 40, measured every
`--every` steps (an odd number sees both phases of the period-2 oscillation at the edge).
"""

import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging

from eos_jax import recipe
from eos_jax.analysis import curvature, sharpness
from eos_jax.training import build, steps, trainer
from eos_jax.training.ensemble import Ensemble
from eos_jax.training.sources import Member
from experiments.configs import eos_digits, mnist1d

_STEPS = flags.DEFINE_integer("steps", 1500, "GD steps of the warm-start run.")
_EVERY = flags.DEFINE_integer("every", 11, "Steps between sharpness measurements.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls of each kind (median reported).")


def _median_ms(fn) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(_REPEATS.value):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def hvp_costs(config) -> dict:
    """Median milliseconds of loss+gradient, a fresh HVP, the linearisation, a reused HVP,
    and one warm measurement (operator at a moved point + warm Lanczos to tol 1e-3), over
    the first 1,000 training examples in one chunk at the initial weights; all jitted and
    warmed up first. Also the bytes the reused linearisation holds."""
    dataset = build.dataset(config)
    model = build.model(config, dataset)
    tx = build.optimizer(config, 1)
    state = steps.init_state(model, tx, 0, dataset.image_shape)
    batches = curvature.train_chunks(dataset, 1000, 1000)
    args = (model, config.loss, state.params, state.batch_stats, batches)
    fresh, reused = curvature.hvp_fn(*args, False), curvature.hvp_fn(*args)
    v = jax.random.normal(jax.random.key(0), (fresh.dim,), fresh.dtype)
    first = curvature.top_eigenvalues(reused, reused.dim, tol=1e-3)
    _, gradient = reused.loss_and_gradient()
    moved = reused.space.unflatten(reused.flat_params - 1e-3 * gradient)

    def warm_measurement():
        op = curvature.hvp_fn(model, config.loss, moved, state.batch_stats, batches)
        return curvature.top_eigenvalues(op, op.dim, init=first.eigenvectors, tol=1e-3)

    def linearise():
        return curvature.hvp_fn(*args)._linearised()

    held = sum(x.nbytes for x in jax.tree.leaves(reused._linearised()))
    out = {
        "model": config.model,
        "params": fresh.dim,
        "grad_ms": _median_ms(reused.loss_and_gradient),
        "fresh_ms": _median_ms(lambda: fresh(v)),
        "linearise_ms": _median_ms(linearise),
        "reused_ms": _median_ms(lambda: reused(v)),
        "warm_ms": _median_ms(lambda: warm_measurement().eigenvalues),
        "warm_products": warm_measurement().num_hvps,
        "held_mb": held / 2**20,
    }
    return out


def warm_start_hvps(config) -> list[int]:
    """Products per Sharpness call (k = 1, tol 1e-3) along a GD run, the first (cold) included."""
    config.num_steps = _STEPS.value
    config.quiet = True
    dataset = build.dataset(config)
    ensemble = Ensemble([Member("gd", config)], dataset, "unrolled")
    with tempfile.TemporaryDirectory() as workdir:
        observer = sharpness.Sharpness(_EVERY.value, size=1000, chunk_size=1000)
        trainer.Trainer(ensemble, config, workdir, [observer]).run()
        records = trainer.read_metrics(workdir)
    return [int(n) for n in sharpness.Sharpness.read(records).member("num_hvps", 0)[1]]


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax logs every checkpoint
    config = eos_digits.get_config("plateau")
    recipe.configure_numerics(config)
    cnn = mnist1d.get_config()
    print(
        "| model | params | gradient ms | fresh HVP / gradient | linearise / gradient | "
        "reused HVP / gradient | warm measurement / gradient (products) | linearisation MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for c in (config, cnn):
        r = hvp_costs(c)
        g = r["grad_ms"]
        print(
            f"| {r['model']} | {r['params']} | {g:.2f} | {r['fresh_ms'] / g:.2f} | "
            f"{r['linearise_ms'] / g:.2f} | {r['reused_ms'] / g:.2f} | "
            f"{r['warm_ms'] / g:.1f} ({r['warm_products']}) | {r['held_mb']:.1f} |"
        )
    counts = warm_start_hvps(config)
    warm = np.array(counts[1:])
    values, times = np.unique(warm, return_counts=True)
    histogram = dict(zip(values.tolist(), times.tolist(), strict=True))
    print(
        f"\nHVPs per sharpness call over {_STEPS.value} GD steps at lr {config.optimizer.lr} "
        f"(every {_EVERY.value} steps): cold first call {counts[0]}; warm calls "
        f"median {np.median(warm):g}, mean {warm.mean():.1f}, min {warm.min()}, max {warm.max()}; "
        f"histogram {histogram}"
    )


if __name__ == "__main__":
    app.run(main)
