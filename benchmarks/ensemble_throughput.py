r"""Throughput of a lockstep ensemble against K separate runs.

  python -m benchmarks.ensemble_throughput [--recipes=embedded,mnist1d,resnet20] [--ks=2,6,12]

ratio = time per step of the K-member ensemble / (K x time per step of one ordinary run)
(< 1: the ensemble is cheaper than running the members one after another). Members are
twins (k = 1, 3, 5, ...) sharing one batch stream, as in the experiments; both timings
include drawing the batch on the host. ResNet-20 runs on random CIFAR-shaped data (only the
shapes matter for time); mnist1d is the MNIST-1D headline recipe (twins_mnist1d.py),
mnist1d_resnet the paper-fidelity one (twins_mnist1d_resnet.py, resnet1d_8). Prints a
Markdown table, with member-steps per second of each. Where the recipe has a held-out split
(mnist1d_resnet: 100,000 signals), each row adds the time to evaluate every member on it,
per member, as a fraction of one member's whole training run (its steps x one run's step).
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


def time_ensemble(config, members, dataset, strategy: str, num_steps: int) -> dict:
    """Seconds per step, the steps in an epoch and, where the dataset has a held-out split,
    seconds to evaluate every member on it."""
    ens = ensemble.Ensemble(members, dataset, strategy)
    seconds, state = common.time_steps(ens, num_steps)
    timed = {"step": seconds, "steps_per_epoch": ens.steps_per_epoch}
    if "heldout" in dataset.splits:
        timed["heldout"] = common.time_heldout(ens, state, config.eval_batch_size)
    return timed


def main(argv):
    del argv
    numerics.configure(numerics.DtypePolicy("fp32", "fp32"), matmul_precision="highest")
    rows = []
    for name in _RECIPES.value:
        config, dataset = common.benchmark_recipe(name)
        one_run = time_ensemble(
            config, [sources.Member("one run", config)], dataset, "unrolled", _STEPS.value
        )
        one = one_run["step"]
        run_seconds = one * recipe.total_steps(config, one_run["steps_per_epoch"])
        for k in map(int, _KS.value):
            for strategy in _STRATEGIES.value:
                members = sources.make_members(config, "update_k", count=k)
                timed = time_ensemble(config, members, dataset, strategy, _STEPS.value)
                t = timed["step"]
                heldout = {}
                if "heldout" in timed:
                    heldout = {
                        "held-out eval s": timed["heldout"],
                        "held-out eval / member run": timed["heldout"] / k / run_seconds,
                    }
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
                        **heldout,
                    }
                )
                print(rows[-1], flush=True)
    print(results.markdown_table(rows, "{:.3g}"))
    fingerprint = numerics.fingerprint(numerics.DtypePolicy("fp32", "fp32"))
    print({k: fingerprint[k] for k in ("cpu_threads", "device_kinds", "versions", "xla_flags")})


if __name__ == "__main__":
    app.run(main)
