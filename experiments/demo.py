r"""`make demo`: the embedded twin experiments (small CNN on digits), a few minutes on 2 cores.

  python -m experiments.demo --workdir=workdirs/demo

Runs experiments/twins.py's table1 (6 seeds x k in 1..11), sources (every source of
difference alone, 6 members) and a short fig2 (twins k = 1, 3 at lr / n), prints their
tables and the run fingerprint. Each call writes to a new timestamped folder under
--workdir; compiled programs are cached in --workdir/jax_cache, so reruns start faster
(a cached program is the same executable: the bits do not change).
"""

import json
import os
import time

import jax
from absl import app, flags

from eos_jax.experiments import twins
from experiments import common
from experiments.configs import twins_embedded

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Parent folder of the demo's runs.")


def demo_configs() -> dict:
    """The three embedded experiments; fig2 shortened to stay within the demo's minutes."""
    configs = {name: twins_embedded.get_config(name) for name in ("table1", "sources", "fig2")}
    configs["fig2"].twins.snapshots = 40
    configs["fig2"].twins.map_snapshots = (0, 10, 20, 40)
    return configs


@common.entry_point
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    configs = demo_configs()
    twins.configure_numerics(configs["sources"])  # the widest numerics: the dtype source needs fp64
    jax.config.update("jax_compilation_cache_dir", os.path.join(_WORKDIR.value, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    root = os.path.join(_WORKDIR.value, time.strftime("%Y%m%d-%H%M%S"))
    t0 = time.time()
    for name, config in configs.items():
        summary = twins.run(config, os.path.join(root, name))
        print(f"\n## {name} ({time.time() - t0:.0f} s so far)\n\n{summary['table']}")
    with open(os.path.join(root, "table1", "fingerprint.json")) as f:
        print("fingerprint:", json.dumps(json.load(f), indent=2))
    print(f"results: {root} (tables *.md / *.csv, figures *.png in each experiment's folder)")


if __name__ == "__main__":
    common.run(main)
