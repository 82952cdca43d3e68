r"""Does the one trainer cost step time? Trainer.run vs a plain blocking loop, same recipe.

  python -m benchmarks.trainer_overhead [--steps=300 --rounds=3]

Baseline: the loop the project had before the trainer: the jitted train step of one run,
no donation, the batch drawn inline, the loss read back (host waits) every step.
Trainer: `trainer.train_and_evaluate` (K = 1 ensemble, donated state, batches drawn ahead on
a thread, losses read back only at log steps), with logging, evaluation and checkpoints at
the last step only, in a fresh work directory per run. Each loop is timed for n and 2n
steps and the difference divided by n: the marginal step time, free of compilation and of
the trainer's final evaluation and checkpoint. Rounds alternate; the median ratio is
printed, and the final parameter hashes of both loops must agree.
"""

import statistics
import tempfile
import time

import jax
from absl import app, flags, logging

from eos_jax import bits, numerics, recipe
from eos_jax.training import build, steps, trainer

_STEPS = flags.DEFINE_integer("steps", 300, "n: runs of n and 2n steps are timed.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (median reported).")


def benchmark_config(num_steps: int):
    """The default recipe for num_steps, observed only at its last step."""
    config = recipe.default_recipe()
    config.num_steps = num_steps
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = num_steps
    config.quiet = True
    return config


def plain_loop(config) -> tuple[float, str]:
    """Seconds for the steps (compilation included), and the final params hash."""
    dataset = build.dataset(config)
    stream = build.stream(config, dataset)
    model = build.model(config, dataset)
    tx = build.optimizer(config, stream.steps_per_epoch)
    step = jax.jit(steps.make_train_step(model, tx, config.loss))
    state = steps.init_state(model, tx, config.seeds.init, dataset.image_shape)
    t0 = time.perf_counter()
    for s in range(config.num_steps):
        state, metrics = step(state, stream.batch(s))
        float(metrics["loss"])
    return time.perf_counter() - t0, bits.tree_hash(state.params)


def trainer_loop(config) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as workdir:
        summary = trainer.train_and_evaluate(config, workdir)
    return summary.seconds_this_session, summary.members[0].params_hash


def marginal_ms_per_step(loop, steps: int) -> tuple[float, str]:
    """(T(2n) - T(n)) / n: the cost of one more step, free of the fixed costs (compilation,
    the final evaluation and checkpoint); and the params hash of the 2n-step run."""
    t_short, _ = loop(benchmark_config(steps))
    t_long, params_hash = loop(benchmark_config(2 * steps))
    return 1e3 * (t_long - t_short) / steps, params_hash


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax logs every save
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"), matmul_precision="highest")
    ratios = []
    for r in range(_ROUNDS.value):
        runs = [plain_loop, trainer_loop] if r % 2 == 0 else [trainer_loop, plain_loop]
        timed = {f.__name__: marginal_ms_per_step(f, _STEPS.value) for f in runs}
        (t_plain, h_plain), (t_trainer, h_trainer) = timed["plain_loop"], timed["trainer_loop"]
        if h_plain != h_trainer:
            raise SystemExit(f"bits differ: plain {h_plain[:16]} vs trainer {h_trainer[:16]}")
        ratios.append(t_trainer / t_plain)
        print(
            f"round {r}: plain {t_plain:.2f} ms/step, trainer {t_trainer:.2f} ms/step "
            f"(marginal), ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(
        f"trainer / plain loop step time, median of {len(ratios)}: {statistics.median(ratios):.3f}"
    )
    print("final params bit-identical in every round: yes")


if __name__ == "__main__":
    app.run(main)
