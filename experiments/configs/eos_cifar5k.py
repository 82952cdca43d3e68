"""Edge of Stability on CIFAR-10 5k (Cohen et al. 2021's setting), for an accelerator:
full-batch gradient descent on 5,000 CIFAR-10 training images, MSE, an fc-tanh MLP or the
small ReLU CNN; sharpness on all 5,000 images, regions on the first 512.

  python -m experiments.eos --config=experiments/configs/eos_cifar5k.py:fc_tanh \
      --config.data_dir=/path/to/tensorflow_datasets --workdir=...

The part after ':' picks the net; both run the plateau sweep (GD at 2/lr = 50, 100, 200).
Not run on this project's CPU (no CIFAR-10 here): the learning rates and lengths are a
first guess from the digits runs, not Cohen et al.'s exact list. The subset is a fixed
random one (seeds.subset = 0), not Cohen et al.'s first 5,000 images.
  fc_tanh  hidden (200, 200), tanh (Cohen et al.'s fc-tanh)
  cnn      small_cnn, widths (32, 64, 64), ReLU
"""

import ml_collections

from eos_jax.studies import eos
from experiments.configs import default

NETS = {
    "fc_tanh": ("mlp", {"hidden": (200, 200), "activation": "tanh"}),
    "cnn": ("small_cnn", {"widths": (32, 64, 64)}),
}
SUBSET = 5000
# 5 parts of 1,000 images: the CNN's full-batch step then needs ~1 GB of activations
MICROBATCHES = 5


def get_config(net: str = "fc_tanh") -> ml_collections.ConfigDict:
    if net not in NETS:
        raise ValueError(f"eos_cifar5k net {net!r} is unknown; known: {', '.join(NETS)}")
    c = default.get_config()
    c.dataset = "cifar10"
    c.model, kwargs = NETS[net]
    c.model_kwargs = ml_collections.ConfigDict(kwargs)
    c.train_subset = c.batch_size = SUBSET  # full batch, one fixed order
    c.microbatches = MICROBATCHES
    c.loss = "mse"
    c.optimizer.update(lr=2 / 100, momentum=0.0, nesterov=False, weight_decay=0.0, decay_epochs=())
    c.num_steps = 8000
    c.log_every_steps = 50
    c.eval_every_steps = 1000
    c.eval_batch_size = 1000
    c.checkpoint_every_steps = 1000
    c.eos = eos.default_settings("plateau")
    c.eos.runs = tuple(
        f"optimizer.lr={2 / edge!r} num_steps={steps}"
        for edge, steps in ((50, 4000), (100, 8000), (200, 16000))
    )
    c.eos.sharpness_every_steps = 100
    c.eos.size = SUBSET
    c.eos.chunk_size = SUBSET // MICROBATCHES
    return c
