"""The paper's recipe (docs/paper.md, section 2) moved to MNIST-1D: the 1-D ResNet-20 on the
8,000 generated training signals, Nesterov SGD momentum 0.9, coupled weight decay 5e-4, lr
0.1 divided by 10 at 20%, 40%, 60% and 80% of training (the paper's epochs 40, 80, 120, 160
of 200), batch 128 with the last partial batch kept (63 steps an epoch, as the authors'
DataLoader keeps it), random shifts of up to 4 samples (the analogue of the paper's crop
with 4 pixels of padding), float32, the update as written.

  python -m experiments.train --config=experiments/configs/mnist1d_resnet.py --workdir=/tmp/r1

What is compressed: 40 epochs instead of 200 (the schedule keeps its shape), ResNet-20
instead of -56 (resnet1d_56 is registered), and the perturbed update rounds as written
rather than as the authors' CUDA kernels (their arithmetic is a recipe field).
"""

import ml_collections

from experiments.configs import mnist1d

STEPS_PER_EPOCH = 63  # ceil(8,000 / 128): the last batch of 64 kept


def get_config() -> ml_collections.ConfigDict:
    c = mnist1d.get_config()
    c.model = "resnet1d_20"
    c.model_kwargs = ml_collections.ConfigDict(
        dict(activation="relu", width=1, use_batch_norm=True)
    )
    c.augment = True
    c.augment_padding = 4
    c.drop_last_batch = False
    c.num_epochs = 40
    c.optimizer.update(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    c.optimizer.decay_epochs = (8, 16, 24, 32)
    c.optimizer.decay_factor, c.optimizer.decay_divisor = None, 10.0  # the authors' lr / 10
    c.eval_every_steps = STEPS_PER_EPOCH  # once an epoch: final accuracy = last 10 epochs
    c.log_every_steps = STEPS_PER_EPOCH
    c.checkpoint_every_steps = 10 * STEPS_PER_EPOCH
    return c
