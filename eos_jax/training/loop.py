"""The training loop: a recipe (ml_collections config) in, a work directory of results out.

Resume is bit-exact: the state is checkpointed whole, and the batch of step s is a pure
function of (seeds, s), so N steps + restart + N steps equals 2N steps in one go.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import numpy as np
import tqdm

from eos_jax import bits, numerics, results
from eos_jax.data import BatchStream, Dataset, eval_batches, load_dataset
from eos_jax.models import create_model
from eos_jax.training import optim, steps
from eos_jax.training.checkpoint import Checkpointer, CheckpointError


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def dtype_policy(config) -> numerics.DtypePolicy:
    return numerics.DtypePolicy(config.numerics.param_dtype, config.numerics.compute_dtype)


def total_steps(config, steps_per_epoch: int) -> int:
    """config.num_steps if set, else config.num_epochs whole epochs."""
    if config.get("num_steps") is not None:
        return int(config.num_steps)
    return int(config.num_epochs) * steps_per_epoch


def validate(config, stop_at_step: int | None = None) -> None:
    """Checks a training recipe's plain values before anything is built or written."""
    positive = [
        "batch_size",
        "eval_batch_size",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "optimizer.lr",
    ]
    positive.append("num_steps" if config.get("num_steps") is not None else "num_epochs")
    for name in positive:
        value = config
        for part in name.split("."):
            value = value[part]
        if not value > 0:
            raise ValueError(f"config.{name}={value!r} must be positive")
    if config.loss not in steps.LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; allowed: {', '.join(steps.LOSSES)}")
    if stop_at_step is not None and stop_at_step < 1:
        raise ValueError(f"stop_at_step={stop_at_step} must be a positive step number")


def make_optimizer(config, steps_per_epoch: int, k: int | None = None):
    """The recipe's SGD: step decay at epoch boundaries, momentum, weight decay, perturbation k."""
    opt = config.optimizer
    schedule = optim.step_decay(
        opt.lr, [int(e) * steps_per_epoch for e in opt.decay_epochs], opt.decay_factor
    )
    return optim.sgd(
        schedule,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay,
        k=opt.k if k is None else k,
    )


def build_model(config, dataset: Dataset):
    policy = dtype_policy(config)
    return create_model(
        config.model,
        num_classes=dataset.num_classes,
        dtype=policy.compute_dtype,
        param_dtype=policy.param_dtype,
        **config.get("model_kwargs", {}),
    )


def build_stream(config, dataset: Dataset, **overrides) -> BatchStream:
    kwargs = dict(
        batch_size=config.batch_size,
        data_seed=config.seeds.data,
        aug_seed=config.seeds.aug,
        augment=config.augment,
    )
    kwargs.update(overrides)
    return BatchStream(dataset, **kwargs)


def load_config_dataset(config) -> Dataset:
    return load_dataset(
        config.dataset,
        data_dir=config.get("data_dir"),
        train_subset=config.get("train_subset"),
        subset_seed=config.seeds.get("subset", 0),
    )


def evaluate(eval_step, state, dataset: Dataset, batch_size: int, split: str = "test"):
    """Logits of the whole split, in order, on the host (for accuracy, churn, output distance)."""
    chunks = [
        np.asarray(eval_step(state, b["image"])) for b in eval_batches(dataset, split, batch_size)
    ]
    return np.concatenate(chunks)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(steps.predictions(logits)) == labels))


def final_accuracy(evals, last: int = 10) -> float:
    """The paper's final accuracy: the mean of the last `last` test evaluations."""
    return float(np.mean(list(evals)[-last:]))


def check_x64(policy: numerics.DtypePolicy) -> None:
    if policy.needs_x64 and not jax.config.jax_enable_x64:
        raise numerics.NumericsError(
            "this config asks for fp64 but x64 is off: call numerics.configure(policy) before "
            "creating arrays (the experiment mains do)"
        )


def train_and_evaluate(config, workdir: str, stop_at_step: int | None = None) -> dict[str, Any]:
    """Trains config's recipe, writing metrics, checkpoints and a summary under workdir.

    Resumes from the latest checkpoint in workdir when there is one. stop_at_step checkpoints
    and returns early without finishing (to split a long run across sessions, e.g. on
    preemptible machines); run again to continue. Returns the summary.
    """
    validate(config, stop_at_step)
    policy = dtype_policy(config)
    check_x64(policy)
    dataset = load_config_dataset(config)
    stream = build_stream(config, dataset)
    num_steps = total_steps(config, stream.steps_per_epoch)
    model = build_model(config, dataset)
    tx = make_optimizer(config, stream.steps_per_epoch)
    state = steps.init_state(model, tx, config.seeds.init, dataset.train_images.shape[1:])
    train_step = jax.jit(steps.make_train_step(model, tx, config.loss))
    eval_step = jax.jit(steps.make_eval_step(model))
    # Only now that the recipe is validated and builds does anything go to disk.
    results.prepare_workdir(workdir, config, numerics.fingerprint(policy, config))

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.get("max_checkpoints", 2))
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(state)
        if int(state.step) != start:
            raise CheckpointError(f"checkpoint {start} holds the state of step {int(state.step)}")
    truncate_metrics(workdir, start)  # records after the restored step will be redone
    end = num_steps if stop_at_step is None else max(start, min(stop_at_step, num_steps))
    writer = results.MetricsWriter(workdir)
    evals: list[float] = [r["test_accuracy"] for r in read_metrics(workdir) if "test_accuracy" in r]
    t0 = time.time()
    bar = progress_bar(config, workdir, num_steps, start)
    with writer:
        for step in range(start, end):
            state, metrics = train_step(state, stream.batch(step))
            loss = float(metrics["loss"])
            done = step + 1
            if not math.isfinite(loss):
                raise diverged(workdir, ckpt, f"loss is {loss} at step {done}")
            bar.update(1)
            # Records hold the loss of the logged step itself (not a running mean), so that a
            # resumed run writes exactly the records of an uninterrupted one.
            record = {}
            if done % config.log_every_steps == 0:
                record.update(train_loss=loss, train_accuracy=float(metrics["accuracy"]))
            if done % config.eval_every_steps == 0 or done == num_steps:
                logits = evaluate(eval_step, state, dataset, config.eval_batch_size)
                evals.append(accuracy(logits, dataset.test_labels))
                record.update(test_accuracy=evals[-1])
                bar.set_postfix(loss=f"{loss:.4f}", test_acc=f"{evals[-1]:.4f}")
            if record:
                writer.write({"step": done, "epoch": done / stream.steps_per_epoch, **record})
            if done % config.checkpoint_every_steps == 0 or done in (end, num_steps):
                if not bits.tree_all_finite(state.params):
                    raise diverged(workdir, ckpt, f"parameters are not finite after step {done}")
                ckpt.save(done, state)
    bar.close()
    ckpt.close()
    if end < num_steps:
        return {
            "stopped_at_step": end,
            "steps": num_steps,
            "params_hash": bits.tree_hash(state.params),
        }
    summary = {
        "status": "finished",
        "steps": num_steps,
        "final_test_accuracy": evals[-1] if evals else None,
        "mean_last_10_test_accuracy": final_accuracy(evals) if evals else None,
        "params_hash": bits.tree_hash(state.params),
        "seconds_this_session": time.time() - t0,
        "resumed_from_step": start,
    }
    results.finish(workdir, summary)
    return summary


def progress_bar(config, workdir: str, num_steps: int, start: int) -> tqdm.tqdm:
    """A step progress bar named after the work directory (off with config.quiet)."""
    return tqdm.tqdm(
        total=num_steps,
        initial=start,
        desc=os.path.basename(os.path.normpath(workdir)),
        unit="step",
        dynamic_ncols=True,
        disable=config.get("quiet", False),
    )


def diverged(workdir: str, ckpt: Checkpointer, what: str) -> TrainingDiverged:
    """Records a divergence in diverged.json (the run stays unfinished) and returns the error."""
    last = ckpt.latest_step()
    where = f"last good checkpoint: step {last}" if last else "no checkpoint was saved yet"
    results.write_json(
        os.path.join(workdir, "diverged.json"),
        {"status": "diverged", "what": what, "last_checkpoint": last},
    )
    return TrainingDiverged(f"{what}; {where} in {ckpt.directory}")


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    return results.read_jsonl(path) if os.path.exists(path) else []


def truncate_metrics(workdir: str, step: int) -> None:
    """Drops records logged after the checkpoint we resume from (they will be redone)."""
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return
    kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= step]
    results.write_jsonl(os.path.join(workdir, "metrics.jsonl"), kept)
