"""Pure train and eval steps over an explicit state.

`train_step(state, batch) -> (state, metrics)` has no hidden state, so the same function is
jitted for ordinary runs, vmapped or unrolled for lockstep ensembles, and pushed through
`jax.jvp` to linearise the training map.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from eos_jax import recipe
from eos_jax.recipe import LOSSES


@flax.struct.dataclass
class TrainState:
    """Everything that evolves during training, as arrays (a pytree)."""

    step: jax.Array
    params: Any
    batch_stats: Any  # BatchNorm running averages; {} for models without BN
    opt_state: Any


@functools.cache
def _jitted_init(model: nn.Module):
    """model.init, jitted once per model (modules compare by value), so that ensemble members
    and repeated runs share one compilation. Jitted: eager init of a deep net dispatches op by
    op and takes seconds on a CPU."""
    return jax.jit(functools.partial(model.init, train=False))


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    init_seed: int,
    input_shape: tuple[int, ...],
) -> TrainState:
    """Initialises a model from its own seed (separate from data and augmentation seeds)."""
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    variables = _jitted_init(model)(jax.random.key(init_seed), dummy)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def loss_fn(name: str, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean loss over the batch; computed in at least float32 whatever the compute dtype."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if logits.ndim == 1:  # a single logit: binary classifier (the one-layer model)
        if name != "cross_entropy":
            raise ValueError(f"loss {name!r} is not defined for a one-logit (binary) model")
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))
    if name == "cross_entropy":
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return jnp.mean(jnp.sum((logits - one_hot) ** 2, axis=-1)) / 2


def predictions(logits: jax.Array) -> jax.Array:
    return (logits > 0).astype(jnp.int32) if logits.ndim == 1 else jnp.argmax(logits, -1)


def _apply(model: nn.Module, params, batch_stats, images, train: bool):
    """Runs the model; returns (logits, new batch_stats)."""
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        return model.apply(variables, images, train=False), batch_stats
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", batch_stats)


def train_mode_loss(model: nn.Module, loss: str, params, batch_stats, batch):
    """The mean loss of one batch at the train-mode forward pass (BatchNorm normalises with
    the batch's own statistics): (loss, (logits, updated batch_stats)).

    The one definition of the loss that training differentiates: the train step, the
    data-loss Hessian (analysis.curvature) and the sharpness observer's full-set loss all
    evaluate it, chunk by chunk.
    """
    logits, new_stats = _apply(model, params, batch_stats, batch["image"], True)
    return loss_fn(loss, logits, batch["label"]), (logits, new_stats)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss: str = "cross_entropy",
    microbatches: int = 1,
):
    """Returns the pure function (state, batch) -> (state, metrics); jit it where you use it.

    microbatches > 1 splits the batch into that many equal, consecutive parts and sums their
    gradients (divided by the count: the batch mean) before one update, for full batches
    that do not fit in memory; the parts are a Python loop inside the one program (a rolled
    loop around conv gradients is slow on CPU). With BatchNorm each part normalises with its
    own statistics and the running statistics are updated once per part.
    """
    recipe.check_microbatches(microbatches)

    def gradients(params, batch_stats, batch):
        def objective(params):
            return train_mode_loss(model, loss, params, batch_stats, batch)

        (value, (logits, new_stats)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        accuracy = jnp.mean(predictions(logits) == batch["label"])
        return value, accuracy, new_stats, grads

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        if microbatches == 1:
            value, accuracy, batch_stats, grads = gradients(state.params, state.batch_stats, batch)
        else:
            recipe.check_microbatches(microbatches, [batch["label"].shape[0]])
            size = batch["label"].shape[0] // microbatches
            batch_stats, values, accuracies, grads = state.batch_stats, [], [], []
            for i in range(microbatches):
                part = jax.tree.map(lambda x, i=i: x[i * size : (i + 1) * size], batch)
                value, accuracy, batch_stats, g = gradients(state.params, batch_stats, part)
                values.append(value)
                accuracies.append(accuracy)
                grads.append(g)
            value, accuracy = sum(values) / microbatches, sum(accuracies) / microbatches
            grads = jax.tree.map(lambda *g: sum(g) / microbatches, *grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        return new_state, {"loss": value, "accuracy": accuracy}

    return train_step


def carries_state(train_step) -> bool:
    """Whether a train step extends the TrainState it is given: it has `init(state)`, which
    adds what it carries (analysis.lyapunov's tangent). The one test of that protocol."""
    return hasattr(train_step, "init")


def make_eval_step(model: nn.Module):
    """Returns the pure function (state, images) -> logits, with BN in inference mode."""

    def eval_step(state: TrainState, images: jax.Array) -> jax.Array:
        return _apply(model, state.params, state.batch_stats, images, False)[0]

    return eval_step
