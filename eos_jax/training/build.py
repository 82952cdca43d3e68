"""What a recipe builds: its dataset, batch stream, model and optimiser."""

from __future__ import annotations

from eos_jax import recipe
from eos_jax.data import BatchStream, Dataset, load_dataset
from eos_jax.data.datasets import KNOWN_NAMES
from eos_jax.data.pipeline import DEFAULT_CROP_PADDING
from eos_jax.models import MODELS, create_model
from eos_jax.training import optim


def check_names(config) -> None:
    """ValueError naming config.model or config.dataset when unknown, with the known ones."""
    if config.model not in MODELS:
        raise ValueError(f"config.model={config.model!r}; known: {', '.join(MODELS)}")
    if config.dataset not in KNOWN_NAMES:
        raise ValueError(f"config.dataset={config.dataset!r}; known: {', '.join(KNOWN_NAMES)}")


def dataset(config) -> Dataset:
    return load_dataset(
        config.dataset,
        data_dir=config.get("data_dir"),
        train_subset=config.get("train_subset"),
        subset_seed=config.seeds.get("subset", 0),
        dataset_kwargs=config.get("dataset_kwargs"),
    )


def stream(config, data: Dataset, reduction_order: int | None = None) -> BatchStream:
    """The recipe's training batches; reduction_order shuffles examples inside each batch."""
    _check_microbatches(config, data)
    order = config.get("data_order", "auto")
    if order == "auto":
        order = "fixed" if config.batch_size >= data.num_train else "reshuffle"
    padding = config.get("augment_padding")  # None: the paper's 4
    return BatchStream(
        data,
        config.batch_size,
        data_seed=config.seeds.data,
        aug_seed=config.seeds.aug,
        augment=config.augment,
        crop_padding=DEFAULT_CROP_PADDING if padding is None else padding,
        drop_last=config.get("drop_last_batch", True),
        reshuffle=order == "reshuffle",
        reduction_order=reduction_order,
    )


def step_options(config) -> dict:
    """Keyword options of the recipe's step beyond (model, tx, loss): {'microbatches': n}
    when the recipe accumulates gradients over n > 1 microbatches, else none (so that a
    make_step without that option still plugs in)."""
    n = config.get("microbatches", 1)
    return {} if n == 1 else {"microbatches": n}


def _check_microbatches(config, data: Dataset) -> None:
    """ValueError unless config.microbatches divides every batch of the stream (the last,
    smaller one included when it is kept)."""
    sizes = [config.batch_size]
    if not config.get("drop_last_batch", True) and data.num_train % config.batch_size:
        sizes.append(data.num_train % config.batch_size)
    recipe.check_microbatches(config.get("microbatches", 1), sizes)


def model(config, data: Dataset):
    policy = recipe.dtype_policy(config)
    return create_model(
        config.model,
        num_classes=data.num_classes,
        dtype=policy.compute_dtype,
        param_dtype=policy.param_dtype,
        **config.get("model_kwargs", {}),
    )


def optimizer(config, steps_per_epoch: int):
    """The recipe's SGD or Adam / AdamW: step decay at epoch boundaries, warm-up, momentum
    or Adam's moments, weight decay, perturbation k."""
    opt = config.optimizer
    arithmetic = opt.get("arithmetic", "as_written")
    if arithmetic != "as_written" and not optim.xla_fuses_multiply_add():
        raise ValueError(
            f"config.optimizer.arithmetic={arithmetic!r} reproduces PyTorch's fused multiply-"
            "adds, but XLA does not fuse them on this backend (no FMA, or --xla_cpu_max_isa="
            "AVX): use 'as_written'"
        )
    schedule = optim.step_decay(
        opt.lr,
        [int(e) * steps_per_epoch for e in opt.decay_epochs],
        opt.decay_factor,
        opt.get("decay_divisor"),
    )
    if opt.get("warmup_steps", 0):
        schedule = optim.linear_warmup(schedule, opt.warmup_steps)
    if opt.get("name", "sgd") != "sgd":
        return optim.adam(
            schedule,
            opt.beta1,
            opt.beta2,
            opt.eps,
            opt.bias_correction,
            opt.weight_decay,
            decoupled=opt.name == "adamw",
            k=opt.k,
        )
    return optim.sgd(
        schedule,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay,
        k=opt.k,
        arithmetic=arithmetic,
    )
