"""Lockstep ensembles: K members trained by ONE jitted step, and their resumable train loop.

Two strategies behind one interface (`Ensemble`):

- 'unrolled': the members are K separate computations inside one jitted function. Each
  member runs the same operations as the recipe trained alone, and on the CPU its bits are
  those of the standalone run (tests/test_ensemble.py); members may differ in anything,
  dtype included.
- 'vmap': the member states are stacked on a leading axis and one vmapped step runs them.
  Members must share model, dtype and optimiser settings (seeds, k, init edits and data
  order may differ). Batched kernels are different kernels, so a member's bits are not
  those of the standalone run. On several devices the member axis is sharded across them.

Members that read the same batch stream (twins) get one batch per step, shared.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from eos_jax import bits, numerics, results
from eos_jax.analysis import divergence
from eos_jax.data import Dataset
from eos_jax.training import loop, steps
from eos_jax.training.checkpoint import Checkpointer, CheckpointError
from eos_jax.training.sources import Member

STRATEGIES = ("unrolled", "vmap")
# Differences vmap allows between members: they live in the state or in the batches.
_VMAP_FREE_KEYS = ("seeds", "optimizer.k")


def default_strategy(backend: str | None = None) -> str:
    """'unrolled' on the CPU (measured faster than vmap and bit-exact: benchmarks/README.md);
    'vmap' on accelerators, where batched kernels are expected to pay (not measured here)."""
    return "unrolled" if (backend or jax.default_backend()) == "cpu" else "vmap"


def _without(config, keys):
    flat = config.to_dict()
    for key in keys:
        head, *rest = key.split(".")
        if rest:
            flat[head] = {k: v for k, v in flat[head].items() if k != rest[0]}
        else:
            flat.pop(head)
    return flat


class Ensemble:
    """K members (sources.Member) in lockstep: one jitted train step, one jitted eval."""

    def __init__(self, members: list[Member], dataset: Dataset, strategy: str = "auto"):
        strategy = default_strategy() if strategy == "auto" else strategy
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {strategy!r}; allowed: auto, {', '.join(STRATEGIES)}"
            )
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        for m in members:
            loop.validate(m.config)
            loop.check_x64(loop.dtype_policy(m.config))
        self.members, self.dataset, self.strategy = list(members), dataset, strategy
        streams = [
            loop.build_stream(m.config, dataset, permute_within_batch_seed=m.permute_seed)
            for m in members
        ]
        keys = [
            (s.batch_size, s.data_seed, s.aug_seed, s.augment, s.permute_within_batch_seed)
            for s in streams
        ]
        distinct = list(dict.fromkeys(keys))
        self.streams = [streams[keys.index(k)] for k in distinct]
        self.stream_of = [distinct.index(k) for k in keys]  # member -> index in self.streams
        self.steps_per_epoch = self.streams[0].steps_per_epoch
        self.models = [loop.build_model(m.config, dataset) for m in members]
        self.txs = [loop.make_optimizer(m.config, self.steps_per_epoch) for m in members]
        self.edits: list[dict | None] = [None] * len(members)  # filled by init()
        self._initial = None
        self.sharding = None
        if strategy == "vmap":
            self._check_vmappable()
            self.sharding = _member_sharding(len(members))
        self._step, self._eval = self._unrolled() if strategy == "unrolled" else self._vmapped()

    def _check_vmappable(self):
        reference = _without(self.members[0].config, _VMAP_FREE_KEYS)
        for m in self.members[1:]:
            if _without(m.config, _VMAP_FREE_KEYS) != reference:
                raise ValueError(
                    f"vmap needs members that differ only in seeds, k, init edits and data "
                    f"order; member {m.label!r} differs in more: use strategy 'unrolled'"
                )

    def _unrolled(self):
        train_steps = [
            steps.make_train_step(model, tx, m.config.loss)
            for model, tx, m in zip(self.models, self.txs, self.members, strict=True)
        ]
        eval_steps = [steps.make_eval_step(model) for model in self.models]

        def step(states, batches):
            out = [
                f(s, batches[j])
                for f, s, j in zip(train_steps, states, self.stream_of, strict=True)
            ]
            return tuple(o[0] for o in out), jnp.stack([o[1]["loss"] for o in out])

        def evaluate(states, images):  # (batch, member, classes)
            return jnp.stack([f(s, images) for f, s in zip(eval_steps, states, strict=True)], 1)

        return jax.jit(step), jax.jit(evaluate)

    def _vmapped(self):
        per_member = len(self.streams) > 1
        train_step = steps.make_train_step(self.models[0], self.txs[0], self.members[0].config.loss)

        def step(states, batch):
            batched = jax.vmap(train_step, in_axes=(0, 0 if per_member else None))
            new, metrics = batched(states, batch)
            return new, metrics["loss"]

        evaluate = jax.vmap(steps.make_eval_step(self.models[0]), in_axes=(0, None), out_axes=1)
        return jax.jit(step), jax.jit(evaluate)

    def init(self):
        """The members' initial states, packed for the strategy (computed once, then cached).

        Every member draws its weights with the reference member's (member 0's) model, from
        its own init seed, then casts them to its own dtype and applies its init edit: the
        dtype source compares one set of weights in three precisions. Bad edits raise here.
        """
        if self._initial is None:
            shape = self.dataset.image_shape
            states = []
            for i, (m, model, tx) in enumerate(
                zip(self.members, self.models, self.txs, strict=True)
            ):
                state = steps.init_state(self.models[0], tx, m.config.seeds.init, shape)
                params = _cast(state.params, model.param_dtype)
                if m.init_edit is not None:
                    edited = m.init_edit.apply(params)
                    self.edits[i] = _describe_edit(m.init_edit, params, edited)
                    params = edited
                states.append(
                    state.replace(
                        params=params,
                        batch_stats=_cast(state.batch_stats, model.param_dtype),
                        opt_state=tx.init(params),
                    )
                )
            self._initial = self._pack(states)
        return self._initial

    def _pack(self, states):
        if self.strategy == "unrolled":
            return tuple(states)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        return stacked if self.sharding is None else jax.device_put(stacked, self.sharding)

    def unpack(self, states) -> list[steps.TrainState]:
        """The member states as a list, whatever the strategy."""
        if self.strategy == "unrolled":
            return list(states)
        return [jax.tree.map(lambda x, i=i: x[i], states) for i in range(len(self.members))]

    def batches(self, step: int):
        """What the jitted step takes at `step`: one batch per distinct stream (unrolled), or
        one shared batch / a member-stacked batch (vmap)."""
        drawn = [s.batch(step) for s in self.streams]
        if self.strategy == "unrolled":
            return tuple(drawn)
        if len(drawn) == 1:
            return drawn[0]
        stacked = {k: np.stack([drawn[j][k] for j in self.stream_of]) for k in drawn[0]}
        return stacked if self.sharding is None else jax.device_put(stacked, self.sharding)

    def step(self, states, step: int):
        """One lockstep training step of every member: (states, loss per member)."""
        return self._step(states, self.batches(step))

    def logits(self, states, batch_size: int = 256, split: str = "test") -> list[np.ndarray]:
        """Each member's logits on a whole split, in order (one jitted call per batch)."""
        stacked = loop.evaluate(self._eval, states, self.dataset, batch_size, split)
        return [stacked[:, i] for i in range(len(self.members))]

    def describe(self, recipe) -> dict:
        """What the recipe (a config) does not say about this ensemble: the strategy and, per
        member, its label, init edit, in-batch order and the config sections it changes.
        Saved in config.json, so that a different ensemble never resumes this one's run."""
        recipe = results.as_dict(recipe)
        return {
            "strategy": self.strategy,
            "members": [
                {
                    "label": m.label,
                    "init_edit": None if m.init_edit is None else dataclasses.asdict(m.init_edit),
                    "permute_seed": m.permute_seed,
                    "config_changes": {
                        k: v for k, v in m.config.to_dict().items() if recipe.get(k) != v
                    },
                }
                for m in self.members
            ],
        }

    def check_watch(
        self, num_steps: int, watch: str | None, watch_every_steps: int, map_steps
    ) -> None:
        """ValueError unless `watch` names a tensor, watch_every_steps >= 1 and every map step
        is a step where the tensor is watched (0 or a multiple of watch_every_steps)."""
        if not watch:
            if map_steps:
                raise ValueError(f"map_steps {tuple(map_steps)} need a tensor to watch")
            return
        tensors = bits.named_leaves(self.unpack(self.init())[0].params)
        if watch not in tensors:
            raise ValueError(f"no tensor {watch!r} to watch; known: {', '.join(tensors)}")
        if not isinstance(watch_every_steps, int) or watch_every_steps < 1:
            raise ValueError(
                f"watch_every_steps must be an integer >= 1, got {watch_every_steps!r}"
            )
        bad = [
            s
            for s in map_steps
            if not isinstance(s, int) or not 0 <= s <= num_steps or s % watch_every_steps
        ]
        if bad:
            raise ValueError(
                f"map_steps {bad} are not watched steps (0 or multiples of "
                f"{watch_every_steps} up to {num_steps})"
            )


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def _member_sharding(num_members: int) -> NamedSharding | None:
    """The member axis split across all devices (None on one device)."""
    devices = jax.devices()
    if len(devices) == 1:
        return None
    if num_members % len(devices):
        raise ValueError(
            f"vmap over {num_members} members on {len(devices)} devices needs the "
            "member count to be a multiple of the device count"
        )
    return NamedSharding(Mesh(np.array(devices), ("member",)), PartitionSpec("member"))


def _describe_edit(edit, params, edited) -> dict:
    tensor, index = edit.resolve(params)
    return {
        "kind": edit.kind,
        "tensor": tensor,
        "index": list(index),
        "amount": edit.amount,
        "value_before": float(bits.named_leaves(params)[tensor][index]),
        "value_after": float(bits.named_leaves(edited)[tensor][index]),
    }


def _member_record(step, i, member, **values):
    return {"step": step, "member": i, "label": member.label, **values}


def _check_finite(ensemble: Ensemble, step: int, what: str, values, workdir, ckpt) -> None:
    """loop.diverged (diverged.json + TrainingDiverged) naming the members whose `values`
    (one pytree per member) hold NaN or inf: a diverged member never ends in a summary."""
    bad = [
        f"{i} ({m.label})"
        for i, (m, v) in enumerate(zip(ensemble.members, values, strict=True))
        if not bits.tree_all_finite(v)
    ]
    if bad:
        raise loop.diverged(
            workdir, ckpt, f"{what} not finite for member {', '.join(bad)} at step {step}"
        )


def train_ensemble(
    ensemble: Ensemble,
    config,
    workdir: str,
    *,
    stop_at_step: int | None = None,
    watch: str | None = None,
    watch_every_steps: int = 0,
    map_steps=(),
) -> dict:
    """Trains the ensemble in lockstep on config's schedule, writing under workdir.

    metrics.jsonl holds, per member: the train loss (kind 'train'); at each evaluation the
    test accuracy, churn and softmax L2 against member 0 and the distances of params and
    momentum per tensor and in total (kind 'eval'); every watch_every_steps steps the
    distance of tensor `watch` (kind 'watch'). At map_steps (each 0 or a multiple of
    watch_every_steps), maps/step_<s>.npz holds divergence.tensor_map of `watch` for each
    member against member 0. Resumes the whole ensemble from its latest checkpoint
    bit-exactly; stop_at_step checkpoints and returns. A loss, test logit or weight that is
    NaN or inf in any member raises loop.TrainingDiverged. config.json holds the recipe and
    ensemble.describe(config), so that a different ensemble is refused the workdir.
    """
    loop.validate(config, stop_at_step)
    states = ensemble.init()
    num_steps = loop.total_steps(config, ensemble.steps_per_epoch)
    ensemble.check_watch(num_steps, watch, watch_every_steps, map_steps)
    policy = loop.dtype_policy(ensemble.members[0].config)
    saved = {**results.as_dict(config), "ensemble": ensemble.describe(config)}
    results.prepare_workdir(workdir, saved, numerics.fingerprint(policy, config))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.get("max_checkpoints", 2))
    start = ckpt.latest_step() or 0
    if start:
        states = ckpt.restore(states)
        restored = sorted({int(m.step) for m in ensemble.unpack(states)})
        if restored != [start]:
            raise CheckpointError(f"checkpoint {start} holds the states of steps {restored}")
    loop.truncate_metrics(workdir, start)  # records after the restored step will be redone
    end = num_steps if stop_at_step is None else max(start, min(stop_at_step, num_steps))
    done_evals = [r for r in loop.read_metrics(workdir) if r.get("kind") == "eval"]
    evals = [
        [r["test_accuracy"] for r in done_evals if r["member"] == i]
        for i in range(len(ensemble.members))
    ]
    t0 = time.time()
    bar = loop.progress_bar(config, workdir, num_steps, start)
    with results.MetricsWriter(workdir) as writer:
        if watch and start == 0:
            _watch(ensemble, states, 0, watch, writer, workdir, 0 in map_steps)
        for step in range(start, end):
            states, loss = ensemble.step(states, step)
            loss = np.asarray(loss)
            done = step + 1
            _check_finite(ensemble, done, "train loss", list(loss), workdir, ckpt)
            bar.update(1)
            if done % config.log_every_steps == 0:
                for i, m in enumerate(ensemble.members):
                    writer.write(_member_record(done, i, m, kind="train", train_loss=loss[i]))
            if watch and done % watch_every_steps == 0:
                _watch(ensemble, states, done, watch, writer, workdir, done in map_steps)
            if done % config.eval_every_steps == 0 or done == num_steps:
                records = _evaluate(ensemble, states, config, done, workdir, ckpt)
                for i, record in enumerate(records):
                    evals[i].append(record["test_accuracy"])
                    writer.write(record)
                bar.set_postfix(acc=" ".join(f"{e[-1]:.3f}" for e in evals))
            if done % config.checkpoint_every_steps == 0 or done in (end, num_steps):
                params = [m.params for m in ensemble.unpack(states)]
                _check_finite(ensemble, done, "weights", params, workdir, ckpt)  # as loop.py
                ckpt.save(done, states)
    bar.close()
    ckpt.close()
    members = ensemble.unpack(states)
    hashes = [bits.tree_hash(s.params) for s in members]
    if end < num_steps:
        return {"stopped_at_step": end, "steps": num_steps, "params_hashes": hashes}
    last = {r["member"]: r for r in loop.read_metrics(workdir) if r.get("kind") == "eval"}
    per_member = [
        {
            "label": m.label,
            "final_accuracy": loop.final_accuracy(evals[i]),
            "last_test_accuracy": evals[i][-1],
            "churn": last[i]["churn"],
            "softmax_l2": last[i]["softmax_l2"],
            **{f"params_{k}": v for k, v in last[i]["params"]["total"].items()},
            "params_hash": hashes[i],
        }
        for i, m in enumerate(ensemble.members)
    ]
    others = per_member[1:]
    summary = {
        "steps": num_steps,
        "strategy": ensemble.strategy,
        "members": per_member,
        "init_edits": ensemble.edits,
        "final_accuracy_std": float(np.std([p["final_accuracy"] for p in per_member])),
        "mean_churn": float(np.mean([p["churn"] for p in others])),
        "mean_softmax_l2": float(np.mean([p["softmax_l2"] for p in others])),
        "mean_params_rel_l1": float(np.mean([p["params_rel_l1"] for p in others])),
        "seconds_this_session": time.time() - t0,
        "resumed_from_step": start,
    }
    results.finish(workdir, summary)
    return summary


def _evaluate(ensemble: Ensemble, states, config, step: int, workdir, ckpt) -> list[dict]:
    """Per member: test accuracy, and churn, softmax L2 and state distances against member 0.
    Checks first that every member's weights and test logits are finite."""
    members = ensemble.unpack(states)
    _check_finite(ensemble, step, "weights", [m.params for m in members], workdir, ckpt)
    logits = ensemble.logits(states, config.eval_batch_size)
    _check_finite(ensemble, step, "test logits", logits, workdir, ckpt)
    labels = ensemble.dataset.test_labels
    out = []
    for i, m in enumerate(ensemble.members):
        distance = divergence.state_distance(members[0], members[i])
        out.append(
            _member_record(
                step,
                i,
                m,
                kind="eval",
                test_accuracy=loop.accuracy(logits[i], labels),
                churn=divergence.churn(logits[0], logits[i]),
                softmax_l2=divergence.softmax_l2(logits[0], logits[i]),
                **distance,
            )
        )
    return out


def map_path(workdir: str, step: int) -> str:
    """Where train_ensemble saves the watched tensor's maps at `step` (arrays 'member<i>')."""
    return os.path.join(workdir, "maps", f"step_{step:08d}.npz")


def _watch(ensemble, states, step, tensor, writer, workdir, save_map: bool) -> None:
    """Distance of one tensor of each member to member 0's; optionally its map, to a file."""
    leaves = [bits.named_leaves(s.params) for s in ensemble.unpack(states)]
    ref = leaves[0][tensor]
    maps = {}
    for i, m in enumerate(ensemble.members):
        other = leaves[i][tensor].astype(ref.dtype)
        writer.write(
            _member_record(step, i, m, kind="watch", tensor=tensor, **bits.diff_stats(ref, other))
        )
        maps[f"member{i}"] = divergence.tensor_map(ref, other)
    if save_map:
        path = map_path(workdir, step)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path + ".tmp.npz", **maps)
        os.replace(path + ".tmp.npz", path)
