r"""`make demo`: the paper's headline for roundings in general on MNIST-1D, about 5 minutes
on 2 cores.

  python -m experiments.demo --workdir=workdirs/demo

Trains the nested design of experiments/configs/twins_mnist1d_resnet.py:demo (the paper's
recipe moved to MNIST-1D: a BatchNorm 1-D ResNet, random shifts, Nesterov SGD, weight decay,
lr / 10 steps; 10 epochs): 2 rounding twins (update_k, the paper's k = 1, 3) of each of 8
base seeds, and 16 members that differ by the seed. Every member is evaluated on the 2,000
test signals and on 100,000 held-out signals of the same generator. Prints each group's
spread, the finite test set's part of it and the distribution-level spread (Jordan's
unbiased estimate), the rounding/seed ratios with intervals over bases, what each says in
words (the VERDICT line: the distribution-level one), and what size would resolve them: at
the demo's size the words can differ between machines (docs/twins.md).
Each call writes to a new timestamped folder under
--workdir (a killed demo, run again, resumes its unfinished folder); compiled programs are
cached in --workdir/jax_cache, so reruns start faster (a cached program is the same
executable: the bits do not change).
"""

import glob
import os
import time

import jax
from absl import flags

from eos_jax import results
from eos_jax.studies import twins
from experiments import common
from experiments.configs import twins_mnist1d_resnet

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Parent folder of the demo's runs.")


@common.entry_point
def main(argv):
    del argv  # common.start refuses positional arguments
    config = twins_mnist1d_resnet.get_config("demo")
    planned = twins.configure_numerics(config)
    jax.config.update("jax_compilation_cache_dir", os.path.join(_WORKDIR.value, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    root = _unfinished(_WORKDIR.value) or os.path.join(
        _WORKDIR.value, time.strftime("%Y%m%d-%H%M%S")
    )
    t0 = time.time()
    summary = twins.execute(config, root, planned)
    print(f"\n## The paper's recipe on MNIST-1D ({time.time() - t0:.0f} s)\n\n{summary['table']}")
    print(summary["verdict"])
    print(
        "At this size another machine's roundings can print other words (docs/twins.md, four "
        "rounding environments of one machine); the design line says what size resolves it."
    )
    print(f"results: {root} (nested.md / .csv, nested_bases, power; figure nested.png)")


def _unfinished(parent: str) -> str | None:
    """The newest run folder under parent if it is unfinished (a killed demo resumes)."""
    runs = sorted(d for d in glob.glob(os.path.join(parent, "2*-*")) if os.path.isdir(d))
    return runs[-1] if runs and not results.is_finished(runs[-1]) else None


if __name__ == "__main__":
    common.start(main)
