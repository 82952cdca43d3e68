r"""What sharpness tracking costs: Hessian-vector product / gradient time at batch 1,000, and
the products per warm-started Lanczos call (k = 1) along a full-batch GD run.

  python -m benchmarks.curvature [--steps=1500 --every=11 --repeats=20]

Both on the EoS recipe (experiments/configs/eos_digits.py: fc-tanh MLP (200, 200), MSE, the
first 1,000 digits) and the HVP ratio also on the small CNN (16, 32, 32). Timings alternate
gradient and product calls in one process (the machine is shared: read the ratios, not the
absolute times). The run is GD at 2/lr = 40, measured every `--every` steps (an odd number
sees both phases of the period-2 oscillation at the edge).
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
from experiments.configs import eos_digits

_STEPS = flags.DEFINE_integer("steps", 1500, "GD steps of the warm-start run.")
_EVERY = flags.DEFINE_integer("every", 11, "Steps between sharpness measurements.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls of each kind (median reported).")


def hvp_over_gradient(config) -> dict:
    """Median seconds of loss+gradient and of one HVP over the first 1,000 training examples
    in one chunk, at the initial weights; both jitted and warmed up first."""
    dataset = build.dataset(config)
    model = build.model(config, dataset)
    tx = build.optimizer(config, 1)
    state = steps.init_state(model, tx, 0, dataset.image_shape)
    batches = curvature.train_chunks(dataset, 1000, 1000)
    op = curvature.hvp_fn(model, config.loss, state.params, state.batch_stats, batches)
    v = jax.random.normal(jax.random.key(0), (op.dim,), op.dtype)
    jax.block_until_ready((op.loss_and_gradient(), op(v)))
    grad_t, hvp_t = [], []
    for _ in range(_REPEATS.value):
        t = time.perf_counter()
        jax.block_until_ready(op.loss_and_gradient())
        grad_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(op(v))
        hvp_t.append(time.perf_counter() - t)
    g, h = statistics.median(grad_t), statistics.median(hvp_t)
    return {"model": config.model, "params": op.dim, "grad_ms": 1e3 * g, "hvp_ms": 1e3 * h}


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
    cnn = eos_digits.get_config("plateau")
    cnn.model, cnn.model_kwargs = "small_cnn", {"widths": (16, 32, 32)}
    print("| model | params | loss+gradient ms | HVP ms | HVP / gradient |")
    print("|---|---|---|---|---|")
    for c in (config, cnn):
        r = hvp_over_gradient(c)
        print(
            f"| {r['model']} | {r['params']} | {r['grad_ms']:.2f} | {r['hvp_ms']:.2f} | "
            f"{r['hvp_ms'] / r['grad_ms']:.2f} |"
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
