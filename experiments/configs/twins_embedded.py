"""Lockstep twin experiments on the embedded recipe: small CNN on digits (minutes on a CPU).

  python -m experiments.twins --config=experiments/configs/twins_embedded.py:table1 --workdir=...

The part after ':' picks the experiment: table1 | fig2 | sources (default sources).
"""

import ml_collections

from eos_jax.training import sources
from experiments.configs import default


def twins_settings(experiment: str) -> ml_collections.ConfigDict:
    """The experiment knobs shared by every twins config (recipes add what differs)."""
    t = ml_collections.ConfigDict()
    t.experiment = experiment
    t.strategy = "auto"  # auto | unrolled | vmap (auto: ensemble.default_strategy)
    t.members = 6  # per ensemble (dtype always has 3: fp64, fp32, bf16)
    t.tensor = "conv1/kernel"  # the entry that ulp_init / bitflip_init change ...
    t.index = ()  # ... () = its first normal nonzero entry (reported in summary.json)
    # table1: one ensemble per seed (init, data and augmentation seeds together), members k.
    t.seeds = (1, 2, 3, 4, 5, 6)
    t.ks = (1, 3, 5, 7, 9, 11)
    # sources: one ensemble per source; member_values: one value per member when a single
    # source is run (() = sources.default_values).
    t.sources = sources.SOURCES
    t.member_values = ()
    # fig2: twins k = 1, 3 with plain SGD at lr / n for n in lr_divisors, n * snapshots steps,
    # the watched tensor recorded every n steps; its |difference| map at map_snapshots.
    t.lr_divisors = (1, 2, 4, 8)
    t.snapshots = 100
    t.watch = "conv1/kernel"
    t.map_snapshots = (0, 10, 25, 50, 100)
    return t


def get_config(experiment: str = "sources") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model_kwargs = ml_collections.ConfigDict({"widths": (16, 32, 32)})
    c.num_epochs = 20  # 11 steps an epoch (1,497 training images, batch 128)
    c.optimizer.decay_epochs = (15,)
    c.eval_every_steps = 11  # once an epoch: the last 10 evaluations are the last 10 epochs
    c.log_every_steps = 11
    c.checkpoint_every_steps = 110
    c.quiet = True
    c.twins = twins_settings(experiment)
    c.twins.watch = "conv2/kernel"  # 16 -> 32 channels: a 32 x 16 map
    c.twins.lr_divisors = (1, 4, 16)
    c.twins.snapshots = 60
    c.twins.map_snapshots = (0, 10, 30, 60)
    return c
