"""The training recipe: its fields, their defaults, and the checks run before anything is built.

A recipe is an ml_collections ConfigDict. `default_recipe()` defines every field the library
reads; the files in experiments/configs/ start from it and change what differs, so library
code and tests never import `experiments`.
"""

from __future__ import annotations

import ast
import copy
import math
import numbers
import os

import jax
import ml_collections

from eos_jax import numerics

LOSSES = ("cross_entropy", "mse")
DATA_ORDERS = ("auto", "reshuffle", "fixed")
OPTIMIZERS = ("sgd", "adam", "adamw")  # config.optimizer.name


def default_recipe() -> ml_collections.ConfigDict:
    """The small CNN on the embedded digits data (no download, seconds on a CPU)."""
    placeholder = ml_collections.config_dict.placeholder
    c = ml_collections.ConfigDict()
    c.model = "small_cnn"
    c.model_kwargs = ml_collections.ConfigDict(dict(widths=(32, 64, 64)))  # the model's options
    c.dataset = "digits"
    c.dataset_kwargs = ml_collections.ConfigDict()  # its options (mnist1d: num_samples, seed)
    c.data_dir = placeholder(str)
    c.train_subset = placeholder(int)
    c.augment = False
    # How far the augmentation moves an example: pad this many zeros per side and crop back
    # (pixels of an image, samples of a 1-D signal; data.pipeline.augment_batch). None: 4,
    # the paper's RandomCrop(32, padding=4); on MNIST-1D's 40 samples a shift of up to 10%.
    c.augment_padding = placeholder(int)
    c.batch_size = 128
    # True: an epoch is floor(N / batch) full batches; False: the last, smaller batch is kept
    # (PyTorch's DataLoader default, which the paper's authors used: 391 CIFAR-10 steps).
    c.drop_last_batch = True
    # Order of examples across epochs: 'reshuffle' draws a new permutation every epoch,
    # 'fixed' keeps epoch 0's. 'auto' is 'fixed' for full-batch runs (batch = training set),
    # where a new order each step would only change the summation order: a rounding source.
    c.data_order = "auto"
    # Gradients of a batch summed over this many equal microbatches before one update
    # (full batches that do not fit in memory); 1 is the plain step.
    c.microbatches = 1
    c.eval_batch_size = 256
    c.loss = "cross_entropy"
    c.num_epochs = 30
    c.num_steps = placeholder(int)  # overrides num_epochs when set
    # Cohen et al.'s protocol: end the run at the first logged step where every member's
    # train loss is <= this (or train accuracy >= that), as if it were the last step.
    c.stop_at_train_loss = placeholder(float)
    c.stop_at_train_accuracy = placeholder(float)

    # Separate seeds per source of randomness, so that each can be varied alone.
    c.seeds = ml_collections.ConfigDict(dict(init=1, data=1, aug=1, subset=0))

    c.optimizer = ml_collections.ConfigDict()
    # 'sgd' (PyTorch's, with momentum / nesterov), 'adam' (coupled L2 decay, as torch's
    # Adam) or 'adamw' (decoupled decay): optim.sgd / optim.adam
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.decay_epochs = (20,)
    c.optimizer.decay_factor = 0.1  # lr *= factor at each decay epoch (PyTorch MultiStepLR) ...
    c.optimizer.decay_divisor = placeholder(float)  # ... or lr /= divisor (set factor to None)
    c.optimizer.warmup_steps = 0  # lr rises linearly to its schedule over these first steps
    # How the update rounds: 'as_written' computes -(lr*k)*(d/k) op by op in the parameter
    # dtype; 'torch_cpu' / 'authors_cuda' reproduce PyTorch's roundings on CPU / on CUDA
    # (where the paper's authors ran): optim.sgd.
    c.optimizer.arithmetic = "as_written"
    c.optimizer.k = 1  # the paper's perturbed update w <- w - (lr*k)*(d/k)
    # Adam / AdamW only (optimizer.name): moment decays, eps in sqrt(v_hat) + eps, and
    # whether m and v are divided by 1 - beta^t
    c.optimizer.beta1 = 0.9
    c.optimizer.beta2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.bias_correction = True

    c.numerics = ml_collections.ConfigDict()
    c.numerics.param_dtype = "fp32"
    c.numerics.compute_dtype = "fp32"
    c.numerics.matmul_precision = "highest"
    c.numerics.cpu_threads = placeholder(int)  # None: all available
    c.numerics.deterministic = True
    c.numerics.xla_flags = ()  # extra XLA flags, e.g. ("--xla_cpu_max_isa=AVX",) for no FMA

    # Devices: a ("member", "data") mesh (eos_jax.training.mesh). data splits every batch
    # (BatchNorm still sees the global batch); member splits a vmap ensemble's members.
    # -1: all devices the other axis leaves. One device: 1 x 1, nothing is sharded.
    c.mesh = ml_collections.ConfigDict(dict(member=1, data=-1))

    # Observers: each runs every so many steps (and at the last step).
    c.log_every_steps = 10
    c.eval_every_steps = 50
    c.checkpoint_every_steps = 200
    c.max_checkpoints = 2
    c.quiet = False
    return c


def dtype_policy(config) -> numerics.DtypePolicy:
    return numerics.DtypePolicy(config.numerics.param_dtype, config.numerics.compute_dtype)


def total_steps(config, steps_per_epoch: int) -> int:
    """config.num_steps if set, else config.num_epochs whole epochs."""
    if config.get("num_steps") is not None:
        return int(config.num_steps)
    return int(config.num_epochs) * steps_per_epoch


def parse_overrides(text: str, setting: str) -> dict:
    """'optimizer.lr=0.05 num_steps=2000' -> {'optimizer.lr': 0.05, 'num_steps': 2000}
    (values are Python literals); `setting` names where the text came from, for errors."""
    overrides = {}
    for item in text.split():
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ValueError(f"{setting} item {item!r} is not field=value (in {text!r})")
        try:
            overrides[field] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{setting} value {value!r} of {field} is not a literal") from None
    if not overrides:
        raise ValueError(f"{setting} entry {text!r} sets nothing")
    return overrides


def with_overrides(config, text: str, setting: str) -> ml_collections.ConfigDict:
    """A validated copy of the recipe with the overrides `text` (parse_overrides) applied.
    `setting` names where the text came from (e.g. 'eos.runs'); its own section (eos.*) is
    a setting of the whole study and refused inside one run. The copy keeps the recipe's
    typed placeholders (e.g. numerics.cpu_threads, None until set), so that a config file
    built with it still takes --config.* overrides of them."""
    overrides = parse_overrides(text, setting)
    section = setting.split(".")[0]
    r = copy.deepcopy(config)
    for field in overrides:
        if field.split(".")[0] == section:
            raise ValueError(
                f"{setting} {text!r}: {field} is a setting of the whole study, not of one "
                f"run; set it as --config.{field}"
            )
        if not _has_field(r, field):
            raise ValueError(f"{setting} {text!r}: unknown field {field!r}")
    try:
        r.update_from_flattened_dict(overrides)
    except TypeError as error:  # ConfigDict refuses a value of another type
        raise ValueError(f"{setting} {text!r}: {error}") from None
    validate(r)
    return r


def _has_field(config, field: str) -> bool:
    node = config
    for part in field.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def _get(config, name: str):
    value = config
    for part in name.split("."):
        value = value[part]
    return value


def validate(config, stop_at_step: int | None = None) -> None:
    """ValueError naming the first bad plain value of a recipe, before anything is built."""
    positive_ints = ["batch_size", "eval_batch_size", "log_every_steps", "eval_every_steps"]
    positive_ints += ["checkpoint_every_steps", "max_checkpoints"]
    positive_ints.append("num_steps" if config.get("num_steps") is not None else "num_epochs")
    for name in positive_ints:
        value = _get(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config.{name}={value!r} must be an integer >= 1")
    check_microbatches(config.get("microbatches", 1), [config.batch_size])
    goal = config.get("stop_at_train_loss")
    if goal is not None and not (isinstance(goal, (int, float)) and math.isfinite(goal)):
        raise ValueError(f"config.stop_at_train_loss={goal!r} must be a finite number or None")
    goal = config.get("stop_at_train_accuracy")
    if goal is not None and not (isinstance(goal, (int, float)) and 0 < goal <= 1):
        raise ValueError(f"config.stop_at_train_accuracy={goal!r} must be in (0, 1] or None")
    lr = config.optimizer.lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"config.optimizer.lr={lr!r} must be a finite number > 0")
    warmup = config.optimizer.get("warmup_steps", 0)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"config.optimizer.warmup_steps={warmup!r} must be an integer >= 0")
    for name in ("optimizer.momentum", "optimizer.weight_decay"):
        value = _get(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"config.{name}={value!r} must be a finite number >= 0")
    validate_adam(config.optimizer)
    validate_sgd(config.optimizer)
    validate_schedule(config.optimizer)
    if config.loss not in LOSSES:
        raise ValueError(f"config.loss={config.loss!r}; allowed: {', '.join(LOSSES)}")
    _check_seeds(config)
    padding = config.get("augment_padding")
    if padding is not None and (
        not isinstance(padding, int) or isinstance(padding, bool) or padding < 0
    ):
        raise ValueError(f"config.augment_padding={padding!r} must be an integer >= 0 or None")
    heldout = config.get("dataset_kwargs", {}).get("heldout_size", 0)
    if config.get("needs_heldout") and heldout == 0:
        raise ValueError(
            f"config.dataset_kwargs.heldout_size={heldout!r}: this config's verdict needs the "
            "held-out split (needs_heldout=True); give a positive multiple of 10, e.g. 100000"
        )
    if config.get("data_order", "auto") not in DATA_ORDERS:
        raise ValueError(
            f"config.data_order={config.data_order!r}; allowed: {', '.join(DATA_ORDERS)}"
        )
    if config.get("mesh") is not None:
        validate_mesh(config.mesh)
    if stop_at_step is not None and stop_at_step < 1:
        raise ValueError(f"stop_at_step={stop_at_step} must be a positive step number")


def validate_adam(opt) -> None:
    """ValueError naming the field unless optimizer.name is known and, for Adam / AdamW,
    beta1, beta2 in [0, 1), eps > 0, bias_correction a bool, and SGD's momentum, nesterov
    and torch arithmetics left off (so that no setting is silently ignored)."""
    name = opt.get("name", "sgd")
    if name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name={name!r}; allowed: {', '.join(OPTIMIZERS)}")
    if name == "sgd":
        return
    for field in ("beta1", "beta2"):
        value = opt.get(field)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not (
            0 <= value < 1
        ):
            raise ValueError(f"config.optimizer.{field}={value!r} must be a number in [0, 1)")
    eps = opt.get("eps")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"config.optimizer.eps={eps!r} must be a finite number > 0")
    if not isinstance(opt.get("bias_correction"), bool):
        raise ValueError(
            f"config.optimizer.bias_correction={opt.get('bias_correction')!r} must be True or False"
        )
    for field, off in (("momentum", 0), ("nesterov", False), ("arithmetic", "as_written")):
        if opt.get(field, off) != off:
            raise ValueError(
                f"config.optimizer.{field}={opt.get(field)!r} is SGD's; with optimizer.name="
                f"{name!r} set it to {off!r} (beta1 is Adam's momentum)"
            )


def is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool: the one test of an integer setting."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite real number (Python or NumPy), not a bool: the one test of a numeric setting."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_seeds(config) -> None:
    """ValueError naming a config.seeds entry that is not an integer >= 0."""
    for name, value in config.get("seeds", {}).items():
        if not (is_int(value) and value >= 0):
            raise ValueError(f"config.seeds.{name}={value!r} must be an integer >= 0")


# How the perturbed update rounds (training.optim): op by op, as PyTorch's CPU kernels, or as
# the authors' CUDA kernels.
ARITHMETICS = ("as_written", "torch_cpu", "authors_cuda")


def validate_sgd(opt) -> None:
    """ValueError naming the field unless the perturbation k is an integer >= 1 and, for
    SGD, momentum is in [0, 1), nesterov a bool (True needs momentum > 0) and arithmetic
    known."""
    k = opt.get("k", 1)
    if not (is_int(k) and k >= 1):
        raise ValueError(f"config.optimizer.k={k!r} must be an integer >= 1")
    if opt.get("name", "sgd") != "sgd":
        return
    if not opt.momentum < 1:
        raise ValueError(f"config.optimizer.momentum={opt.momentum!r} must be in [0, 1)")
    nesterov = opt.get("nesterov", False)
    if not isinstance(nesterov, bool):
        raise ValueError(f"config.optimizer.nesterov={nesterov!r} must be True or False")
    if nesterov and opt.momentum == 0:
        raise ValueError(
            "config.optimizer.nesterov=True needs config.optimizer.momentum > 0, got "
            f"{opt.momentum!r}: set the momentum, or nesterov=False"
        )
    arithmetic = opt.get("arithmetic", "as_written")
    if arithmetic not in ARITHMETICS:
        raise ValueError(
            f"config.optimizer.arithmetic={arithmetic!r}; allowed: {', '.join(ARITHMETICS)}"
        )


def validate_schedule(opt) -> None:
    """ValueError naming the field unless decay_epochs are increasing numbers > 0 and
    exactly one of decay_factor and decay_divisor is a number > 0 (the other None)."""
    epochs = tuple(opt.get("decay_epochs", ()))
    if not all(is_number(e) and e > 0 for e in epochs) or list(epochs) != sorted(epochs):
        raise ValueError(
            f"config.optimizer.decay_epochs={epochs!r} must be increasing epochs > 0 "
            "(() for a constant lr)"
        )
    factor, divisor = opt.get("decay_factor"), opt.get("decay_divisor")
    if (factor is None) == (divisor is None):
        raise ValueError(
            f"config.optimizer.decay_factor={factor!r}, config.optimizer.decay_divisor="
            f"{divisor!r}: give exactly one (lr * factor or lr / divisor), the other None"
        )
    for name, value in (("decay_factor", factor), ("decay_divisor", divisor)):
        if value is not None and not (is_number(value) and value > 0):
            raise ValueError(f"config.optimizer.{name}={value!r} must be a finite number > 0")


def validate_numerics(config) -> None:
    """ValueError naming the config.numerics field unless the dtypes and matmul precision
    are known names and cpu_threads None or an integer in [1, CPUs available]."""
    n = config.numerics
    for name in ("param_dtype", "compute_dtype"):
        if n[name] not in numerics.DTYPES:
            raise numerics.NumericsError(
                f"config.numerics.{name}={n[name]!r}; allowed: {', '.join(numerics.DTYPES)}"
            )
    if n.matmul_precision not in numerics.MATMUL_PRECISIONS:
        raise numerics.NumericsError(
            f"config.numerics.matmul_precision={n.matmul_precision!r}; allowed: "
            f"{', '.join(numerics.MATMUL_PRECISIONS)}"
        )
    threads, available = n.get("cpu_threads"), len(os.sched_getaffinity(0))
    if threads is not None and not (is_int(threads) and 1 <= threads <= available):
        raise numerics.NumericsError(
            f"config.numerics.cpu_threads={threads!r} must be None (all) or an integer in "
            f"[1, {available}] (the CPUs available)"
        )


def check_microbatches(n, batch_sizes=()) -> None:
    """ValueError unless n (config.microbatches) is an integer >= 1 dividing every batch size
    given: the one check of the recipe, the stream's batches and the step's."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"config.microbatches={n!r} must be an integer >= 1")
    bad = sorted(s for s in set(batch_sizes) if s % n)
    if bad:
        raise ValueError(
            f"config.microbatches={n} must divide every batch; batches of {bad} examples do not"
        )


def _mesh_size(mesh, name: str) -> int:
    value = mesh[name]
    if not isinstance(value, int) or isinstance(value, bool) or not (value >= 1 or value == -1):
        raise ValueError(f"config.mesh.{name}={value!r} must be an integer >= 1, or -1 (the rest)")
    return value


def validate_mesh(mesh) -> None:
    """ValueError naming a bad config.mesh field (before any device is asked)."""
    if _mesh_size(mesh, "member") == _mesh_size(mesh, "data") == -1:
        raise ValueError("config.mesh.member and config.mesh.data cannot both be -1 (the rest)")


def configure_numerics(config) -> numerics.DtypePolicy:
    """Applies config.numerics before any array exists (x64, XLA flags, threads, matmul
    precision); returns the dtype policy. Entry points call it first."""
    validate_numerics(config)
    n = config.numerics
    policy = dtype_policy(config)
    numerics.configure(
        policy, n.matmul_precision, n.get("cpu_threads"), n.deterministic, tuple(n.xla_flags)
    )
    return policy


def check_x64(policy: numerics.DtypePolicy) -> None:
    """NumericsError unless x64 is on for a policy that needs it (it must be set up front)."""
    if policy.needs_x64 and not jax.config.jax_enable_x64:
        raise numerics.NumericsError(
            "this config asks for fp64 but x64 is off: call numerics.configure(policy) before "
            "creating arrays (the experiment mains do)"
        )
