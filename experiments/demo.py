r"""`make demo`: the paper's headline at its fidelity on MNIST-1D, about 5 minutes on 2 cores.

  python -m experiments.demo --workdir=workdirs/demo

Trains two lockstep ensembles of the paper's recipe moved to MNIST-1D
(experiments/configs/twins_mnist1d_resnet.py:demo: a BatchNorm 1-D ResNet, random shifts,
Nesterov SGD, weight decay, lr / 10 steps, 20 epochs): 12 members that differ only by one
rounding of the update (update_k: the paper's k = 1, 3, 5, ...) and 12 that differ by the
random seed. Every member is evaluated on the 2,000 test signals and on 100,000 held-out
signals of the same generator (its accuracy on the distribution). Prints the table with
95% intervals, the two verdict lines (rounding/seed accuracy-std ratio on the test set and
on the distribution) and what each says in words, and writes the figures (sources.png,
onset.png). Each call writes to a new timestamped folder under --workdir; compiled
programs are cached in --workdir/jax_cache, so reruns start faster (a cached program is
the same executable: the bits do not change).
"""

import json
import os
import time

import jax
from absl import flags

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
    root = os.path.join(_WORKDIR.value, time.strftime("%Y%m%d-%H%M%S"))
    t0 = time.time()
    summary = twins.execute(config, root, planned)
    print(f"\n## The paper's recipe on MNIST-1D ({time.time() - t0:.0f} s)\n\n{summary['table']}")
    print(summary["verdict"])
    with open(os.path.join(root, "fingerprint.json")) as f:
        fingerprint = json.load(f)
    keys = ("backend", "cpu", "cpu_threads", "xla_flags", "versions")
    print("fingerprint:", json.dumps({k: fingerprint[k] for k in keys}))
    print(f"results: {root} (sources.md / sources.csv, figures sources.png and onset.png)")


if __name__ == "__main__":
    common.start(main)
