"""Default recipe: the small CNN on the embedded digits data (no download, minutes on a CPU).

Every other config starts from this one and changes what differs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "small_cnn"
    c.model_kwargs = ml_collections.ConfigDict(dict(widths=(32, 64, 64)))  # small_cnn's options
    c.dataset = "digits"
    c.data_dir = ml_collections.config_dict.placeholder(str)
    c.train_subset = ml_collections.config_dict.placeholder(int)
    c.augment = False
    c.batch_size = 128
    c.eval_batch_size = 256
    c.loss = "cross_entropy"
    c.num_epochs = 30
    c.num_steps = ml_collections.config_dict.placeholder(int)  # overrides num_epochs when set

    # Separate seeds per source of randomness, so that each can be varied alone.
    c.seeds = ml_collections.ConfigDict(dict(init=1, data=1, aug=1, subset=0))

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.decay_epochs = (20,)
    c.optimizer.decay_factor = 0.1
    c.optimizer.decay_divisor = ml_collections.config_dict.placeholder(float)  # lr / it
    c.optimizer.arithmetic = "as_written"  # or "torch_cpu", "authors_cuda" (optim.sgd)
    c.optimizer.k = 1  # the paper's perturbed update w <- w - (lr*k)*(d/k)

    c.numerics = ml_collections.ConfigDict()
    c.numerics.param_dtype = "fp32"
    c.numerics.compute_dtype = "fp32"
    c.numerics.matmul_precision = "highest"
    c.numerics.cpu_threads = ml_collections.config_dict.placeholder(int)  # None: all available
    c.numerics.deterministic = True
    c.numerics.xla_flags = ()  # extra XLA flags, e.g. ("--xla_cpu_max_isa=AVX",) for no FMA

    c.log_every_steps = 10
    c.eval_every_steps = 50
    c.checkpoint_every_steps = 200
    c.max_checkpoints = 2
    c.quiet = False
    return c
