r"""`make demo`: trains the small CNN on the embedded digits data and prints what happened.

  python -m experiments.demo --workdir=workdirs/demo

Each call writes to a new timestamped folder under --workdir, so the demo can be rerun.
"""

import json
import os
import time

from absl import app, flags

from eos_jax.training import loop
from experiments import common
from experiments.configs import default

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Parent folder of the demo's runs.")


@common.entry_point
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = default.get_config()
    common.configure_numerics(config)
    workdir = os.path.join(_WORKDIR.value, time.strftime("%Y%m%d-%H%M%S"), "train")
    summary = loop.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "fingerprint.json")) as f:
        print("fingerprint:", json.dumps(json.load(f), indent=2))
    print(
        f"test accuracy {summary['final_test_accuracy']:.4f} "
        f"(mean of the last 10 evaluations {summary['mean_last_10_test_accuracy']:.4f})"
    )
    print(f"results: {workdir}")


if __name__ == "__main__":
    app.run(main)
