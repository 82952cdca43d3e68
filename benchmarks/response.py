r"""What the linear-response observer costs: a training step of update_k twins (k = 1, 3) on
the recipe of a response study (--recipe: mnist1d, experiments/configs/response_mnist1d.py:
1-D CNN, batch 128, SGD momentum 0.9; or mnist1d_resnet, response_mnist1d_resnet.py: the
BatchNorm resnet1d_8, Nesterov momentum, weight decay, random shifts), unrolled ensemble,
with analysis.response.LinearResponse observing and recording every step, against the
plain step of the same twins.

  python -m benchmarks.response [--recipe=mnist1d] [--steps=40] [--rounds=5]

Per observed step the observer runs U and U' at member 0's state in float32 (two member
steps), then in float64 U at w_t and at w_t + Delta_t and three JVPs (Delta, delta^f,
delta^r), and the norms per tensor. Plain and observed steps alternate in blocks of
`steps` in one process (the machine is shared: read the ratios, not the absolute times);
the first observed step of each block is left out (its responses start afresh at the
block's first state: observer.start). Also timed alone: the float64 split
(analysis.response.split_step) against the plain step. Target of issue 15: <= 3x the plain
step; the float64 part may cost more.
"""

import functools
import statistics
import time
import types

import jax
from absl import app, flags

from eos_jax import numerics, recipe
from eos_jax.analysis import response
from eos_jax.training import build, sources, trainer
from eos_jax.training.ensemble import Ensemble
from experiments.configs import response_mnist1d, response_mnist1d_resnet

RECIPES = {
    "mnist1d": response_mnist1d.get_config,
    "mnist1d_resnet": response_mnist1d_resnet.get_config,
}
_RECIPE = flags.DEFINE_enum("recipe", "mnist1d", list(RECIPES), "The response study's recipe.")
_STEPS = flags.DEFINE_integer("steps", 40, "Steps per block.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Blocks of each kind, alternating.")


def main(argv):
    del argv
    config = RECIPES[_RECIPE.value]()
    recipe.configure_numerics(config)
    numerics.enable_x64()
    config.quiet = True
    members = sources.make_members(config, "update_k", (1, 3))
    ens = Ensemble(members, build.dataset(config), "unrolled")
    observer = response.LinearResponse(1)
    observer.setup(ens, 10**6)
    run = trainer.Run(types.SimpleNamespace(ensemble=ens), trainer.NullWriter(), 10**6, 10**6, None)
    states, step = ens.init(), 0
    run.at(0, states, {})
    observer.start(run)
    plain_t, observed_t, split_t = [], [], []

    def one(observe: bool) -> float:
        nonlocal states, step
        if observe and observer._previous[0] != step:  # a block starts: responses from here
            run.at(step, states, {})
            observer.start(run)
        t = time.perf_counter()
        states, metrics = ens.step(states, ens.batches(step))
        step += 1
        run.at(step, states, metrics)
        if observe:
            observer(run)  # reads its norms back: waits for the device
        jax.block_until_ready(states)
        return time.perf_counter() - t

    for _ in range(3):  # compile both
        one(False)
        one(True)
        one(True)
    for _ in range(_ROUNDS.value):
        plain_t += [one(False) for _ in range(_STEPS.value)]
        observed_t += [one(True) for _ in range(_STEPS.value)][1:]
    # the float64 split alone, at the last state (w_t = w'_t's member 0 copy is fine here)
    members_ = [response._plain_state(s) for s in ens.unpack(states)]
    batch = jax.device_put(ens.streams[0].batch(step))
    stepped = observer._steps_at(*members_, batch, batch)
    zero = response.flat64(members_[0]) * 0
    split = functools.partial(observer._split, *members_[:2], batch, *members_, stepped)
    jax.block_until_ready(split(zero, zero))
    for _ in range(_STEPS.value):
        t = time.perf_counter()
        jax.block_until_ready(split(zero, zero))
        split_t.append(time.perf_counter() - t)
    p, q, s = (statistics.median(x) for x in (plain_t, observed_t, split_t))
    print(f"| twins' step (2 members, {config.model}) | ms (median) |")
    print("|---|---|")
    print(f"| plain | {1e3 * p:.2f} |")
    print(f"| with LinearResponse every step | {1e3 * q:.2f} |")
    print(f"| of which the float64 split alone | {1e3 * s:.2f} |")
    print(f"observed / plain: {q / p:.2f} (target <= 3); float64 split / plain: {s / p:.2f}; ")
    print(f"{jax.default_backend()}, {len(plain_t)} plain and {len(observed_t)} observed steps")


if __name__ == "__main__":
    app.run(main)
