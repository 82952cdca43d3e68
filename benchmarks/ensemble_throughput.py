r"""Throughput of a lockstep ensemble against K separate runs.

  python -m benchmarks.ensemble_throughput [--recipes=embedded,mnist1d,resnet20] [--ks=2,6,12]

ratio = time per step of the K-member ensemble / (K x time per step of one ordinary run)
(< 1: the ensemble is cheaper than running the members one after another). Members are
twins (k = 1, 3, 5, ...) sharing one batch stream, as in the experiments; both timings
include drawing the batch on the host. ResNet-20 runs on random CIFAR-shaped data (only the
shapes matter for time); mnist1d is the MNIST-1D headline recipe (twins_mnist1d.py),
mnist1d_resnet the paper-fidelity one (twins_mnist1d_resnet.py, resnet1d_8). Prints a
Markdown table, with member-steps per second of each. Where the recipe has a held-out split
(mnist1d_resnet: 100,000 signals), it also prints the time to evaluate one member on it,
against that member's whole training run (its steps x one run's step).
"""

from absl import app, flags

from benchmarks import common
from eos_jax import numerics, recipe, results
from eos_jax.training import ensemble, sources

_RECIPES = flags.DEFINE_list(
    "recipes", ["embedded", "mnist1d", "resnet20"], "Any of embedded, mnist1d, resnet20."
)
_KS = flags.DEFINE_list("ks", ["2", "6", "12"], "Ensemble sizes.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
_STRATEGIES = flags.DEFINE_list("strategies", list(ensemble.STRATEGIES), "Strategies.")


def ensemble_seconds_per_step(members, dataset, strategy: str, num_steps: int) -> float:
    return common.time_steps(ensemble.Ensemble(members, dataset, strategy), num_steps)[0]


def heldout_line(name: str, config, dataset, step_seconds: float) -> str:
    """One member's evaluation on the held-out split against its whole training run (its
    steps at step_seconds each)."""
    ens = ensemble.Ensemble([sources.Member("one run", config)], dataset, "unrolled")
    seconds = common.time_heldout(ens, ens.init(), config.eval_batch_size)
    run = step_seconds * recipe.total_steps(config, ens.steps_per_epoch)
    size = len(dataset.heldout_labels)
    return (
        f"{name}: evaluating one member on the {size:,} held-out signals takes {seconds:.2f} s, "
        f"{seconds / run:.3f} of its training run ({run:.0f} s of steps)"
    )


def main(argv):
    del argv
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"), matmul_precision="highest")
    rows, lines = [], []
    for name in _RECIPES.value:
        config, dataset = common.benchmark_recipe(name)
        one = ensemble_seconds_per_step(
            [sources.Member("one run", config)], dataset, "unrolled", _STEPS.value
        )
        if "heldout" in dataset.splits:
            lines.append(heldout_line(name, config, dataset, one))
            print(lines[-1], flush=True)
        for k in map(int, _KS.value):
            for strategy in _STRATEGIES.value:
                members = sources.make_members(config, "update_k", count=k)
                t = ensemble_seconds_per_step(members, dataset, strategy, _STEPS.value)
                rows.append(
                    {
                        "recipe": name,
                        "K": k,
                        "strategy": strategy,
                        "one run ms/step": 1e3 * one,
                        "ensemble ms/step": 1e3 * t,
                        "ratio": t / (k * one),
                        "member-steps/s": k / t,
                        "one run steps/s": 1 / one,
                    }
                )
                print(rows[-1], flush=True)
    print(results.markdown_table(rows, "{:.3g}"))
    print("\n".join(lines))
    fingerprint = numerics.fingerprint(numerics.DtypePolicy("fp32", "fp32"))
    print({k: fingerprint[k] for k in ("cpu_threads", "device_kinds", "versions", "xla_flags")})


if __name__ == "__main__":
    app.run(main)
