"""Edge of Stability on MNIST-1D with the 1-D CNN: full-batch gradient descent on the first
1,000 training signals (a fixed subset; batch = subset, so one fixed order).

  python -m experiments.eos --config=experiments/configs/eos_mnist1d.py:plateau --workdir=...

The part after ':' picks the sweep (docs/eos.md has the numbers they printed):
  plateau        MSE at 2/lr = 20 and 40 (initial sharpness ~6): sharpening, then 2/lr?
  cross_entropy  cross-entropy at 2/lr = 5, 10, 20 (initial sharpness ~1.2)
  resnet         MSE at 2/lr = 20 with the 1-D ResNet-20 (BatchNorm, residual blocks)
  complexity     MSE at 2/lr = 20, depth 1-4 conv layers and width 16-64: the plateau,
                 the step it is reached, and the share of units in the transitioning band
  adam           full-batch Adam (beta1 0.9) at two lrs: the preconditioned sharpness
                 against 38/lr, and |mu|
"""

import ml_collections

from eos_jax.studies import eos
from experiments.configs import mnist1d
from experiments.configs.eos_digits import sweep_runs


def get_config(experiment: str = "plateau") -> ml_collections.ConfigDict:
    c = mnist1d.get_config()
    c.model_kwargs.widths = (32, 32, 32)
    c.train_subset = 1000
    c.batch_size = 1000  # full batch
    c.loss = "mse"
    c.optimizer.update(lr=2 / 20, momentum=0.0, nesterov=False, weight_decay=0.0, decay_epochs=())
    c.num_steps = 2000
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.eos = eos.default_settings(experiment)
    c.eos.sharpness_every_steps = 50
    c.eos.regions_size = 500
    if experiment == "plateau":
        c.eos.runs = sweep_runs((2 / 20, 2000, ""), (2 / 40, 3000, ""))
    elif experiment == "cross_entropy":
        c.loss = "cross_entropy"
        c.eos.runs = sweep_runs((2 / 5, 2000, ""), (2 / 10, 2000, ""), (2 / 20, 3000, ""))
    elif experiment == "resnet":
        c.model, c.model_kwargs = "resnet1d_20", ml_collections.ConfigDict()
        c.eos.regions_every_steps = 0  # its activations take BatchNorm outputs
        c.eos.runs = sweep_runs((2 / 20, 2000, ""))
    elif experiment == "adam":
        c.optimizer.update(name="adam", beta1=0.9, beta2=0.999, eps=1e-8)
        c.eos.runs = sweep_runs((1e-3, 1000, ""), (2.5e-3, 1000, ""))
        c.eos.edge_every_steps = 100
        c.eos.regions_every_steps = 0
    elif experiment == "complexity":
        c.eos.runs = sweep_runs(
            *(
                (2 / 20, 2000, f"model_kwargs.widths={widths!r}".replace(" ", ""))
                for widths in (
                    (32,),
                    (32, 32),
                    (32, 32, 32),
                    (32, 32, 32, 32),
                    (16, 16, 16),
                    (64, 64, 64),
                )
            )
        )
    return c
