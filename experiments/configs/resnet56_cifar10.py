"""The paper's recipe (docs/paper.md, section 2): ResNet-56 on CIFAR-10, 200 epochs.

Nesterov SGD, momentum 0.9, coupled L2 weight decay 5e-4, lr 0.1 divided by 10 at epochs
40, 80, 120 and 160; batch 128 with the last partial batch kept (391 steps an epoch), crop +
flip augmentation; float32; the update rounded as the authors' code rounds it on CUDA.
Needs cifar10 prepared for tensorflow-datasets (see docs/data.md).
"""

import ml_collections

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.model = "resnet56"
    c.model_kwargs = ml_collections.ConfigDict(dict(activation="relu"))
    c.dataset = "cifar10"
    c.augment = True
    c.drop_last_batch = False  # the authors' DataLoader keeps the last batch: 391 steps
    c.num_epochs = 200
    c.optimizer.decay_epochs = (40, 80, 120, 160)
    c.optimizer.decay_factor, c.optimizer.decay_divisor = None, 10.0  # the authors' lr / 10
    # The update rounded as in the authors' runs on CUDA (lr*k in double, d * (1/k), FMA);
    # 'as_written' is the perturbation as the paper writes it.
    c.optimizer.arithmetic = "authors_cuda"
    c.eval_every_steps = 391  # once an epoch (ceil(50,000 / 128) steps)
    c.checkpoint_every_steps = 1955
    return c
