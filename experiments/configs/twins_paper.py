"""Lockstep twin experiments on the paper's recipe (docs/paper.md, sections 2-3).

table1: ResNet-56, CIFAR-10, 200 epochs, seeds 1..6 x k in {1, 3, 5, 7, 9, 11}.
fig2:   Swish ResNet-56 (s(x) = x * sigmoid(5x)), plain SGD, weight decay 5e-4,
        lr = 0.1 / n, n epochs' worth of PDE time; stage 2, block 6, first conv watched.
sources: every source alone on the table1 recipe, 6 members each.

  python -m experiments.twins --config=experiments/configs/twins_paper.py:table1 --workdir=...
"""

from eos_jax.studies import twins
from experiments.configs import resnet56_cifar10


def get_config(experiment: str = "table1"):
    c = resnet56_cifar10.get_config()
    c.twins = twins.default_settings(experiment)
    c.twins.tensor = "stem_conv/kernel"  # the first conv
    c.twins.watch = "stage2_block6/conv1/kernel"
    c.twins.lr_divisors = (2, 4, 8, 16, 32, 320, 3200, 32000)
    c.twins.snapshots = 100
    c.twins.map_snapshots = (0, 10, 25, 50, 100)
    if experiment == "fig2":
        c.model_kwargs = {"activation": "swish", "swish_beta": 5.0}
    return c
