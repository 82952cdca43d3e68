"""Lockstep twin experiments on the embedded recipe: small CNN on digits (minutes on a CPU).

  python -m experiments.twins --config=experiments/configs/twins_embedded.py:table1 --workdir=...

The part after ':' picks the experiment: table1 | fig2 | sources (default sources).
"""

import ml_collections

from eos_jax.studies import twins
from experiments.configs import default


def get_config(experiment: str = "sources") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model_kwargs = ml_collections.ConfigDict({"widths": (16, 32, 32)})
    c.num_epochs = 20  # 11 steps an epoch (1,497 training images, batch 128)
    c.optimizer.decay_epochs = (15,)
    c.eval_every_steps = 11  # once an epoch: the last 10 evaluations are the last 10 epochs
    c.log_every_steps = 11
    c.checkpoint_every_steps = 110
    c.twins = twins.default_settings(experiment)
    c.twins.watch = "conv2/kernel"  # 16 -> 32 channels: a 32 x 16 map
    c.twins.lr_divisors = (1, 4, 16)
    c.twins.snapshots = 60
    c.twins.map_snapshots = (0, 10, 30, 60)
    return c
