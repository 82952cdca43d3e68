"""K >= 1 members trained in lockstep by ONE jitted step; a single run is K = 1.

Two strategies behind one interface (`Ensemble`):

- 'unrolled': the members are K separate computations inside one jitted function. Each
  member runs the same operations as the recipe trained alone, and on the CPU its bits are
  those of the standalone run (tests/test_ensemble.py); members may differ in anything,
  dtype included.
- 'vmap': the member states are stacked on a leading axis and one vmapped step runs them.
  Members must come from one vmappable source (seeds, k, init edits, in-batch order).
  Batched kernels are different kernels, so a member's bits are not those of the
  standalone run.

Where the arrays live is the mesh's business (eos_jax.training.mesh, from config.mesh):
on several devices the batch is split over `data` and a vmap ensemble's members over
`member`; on one device nothing changes.

Members that read the same batch stream (twins) get one batch per step, shared. The state
is donated to the step, so the caller must not reuse a state it passed in.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from eos_jax import recipe, results
from eos_jax.data import Dataset, eval_batches
from eos_jax.training import build, sources, steps
from eos_jax.training import mesh as mesh_lib
from eos_jax.training.sources import Member

STRATEGIES = ("unrolled", "vmap")
# What a config may ask for instead of a strategy: the goal. 'bit_identical': member 0 is
# the standalone run bit for bit (unrolled, everywhere). 'fast' (= 'auto'): unrolled on the
# CPU, vmap on GPU/TPU, where member 0 is then only within rounding of the standalone run.
GOALS = ("bit_identical", "fast", "auto")


def default_strategy(backend: str | None = None) -> str:
    """'unrolled' on the CPU (measured faster than vmap and bit-exact: benchmarks/README.md);
    'vmap' on accelerators, where batched kernels are expected to pay (not measured here)."""
    return "unrolled" if (backend or jax.default_backend()) == "cpu" else "vmap"


def resolve_strategy(name: str, backend: str | None = None) -> str:
    """The strategy for a strategy or goal name (GOALS); ValueError for anything else."""
    if name == "bit_identical":
        return "unrolled"
    if name in ("fast", "auto"):
        return default_strategy(backend)
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(GOALS + STRATEGIES)}")
    return name


class Ensemble:
    """K members (sources.Member) in lockstep: one jitted train step, one jitted eval.

    make_step(model, tx, loss) -> step(state, batch) -> (state, {'loss', 'accuracy'}) is the
    per-member step (steps.make_train_step by default), so other steps plug in unchanged; a
    list gives one per member ('unrolled' only). A step with an `init(state)` method carries
    more than the TrainState (e.g. a tangent: analysis.lyapunov): Ensemble.init passes the
    member's initial state through it.
    mesh: the device mesh (default: built from member 0's config.mesh).
    """

    def __init__(
        self,
        members: list[Member],
        dataset: Dataset,
        strategy: str = "auto",
        make_step=steps.make_train_step,
        mesh: Mesh | None = None,
    ):
        strategy = resolve_strategy(strategy)
        if not members:
            raise ValueError("an ensemble needs at least 1 member, got none")
        for m in members:
            recipe.validate(m.config)
            recipe.check_x64(recipe.dtype_policy(m.config))
        self.members, self.dataset, self.strategy = list(members), dataset, strategy
        streams = [build.stream(m.config, dataset, m.reduction_order) for m in members]
        keys = [
            (s.batch_size, s.data_seed, s.aug_seed, s.augment, s.crop_padding, s.reduction_order)
            for s in streams
        ]
        distinct = list(dict.fromkeys(keys))
        self.streams = [streams[keys.index(k)] for k in distinct]
        self.stream_of = [distinct.index(k) for k in keys]  # member -> index in self.streams
        self.steps_per_epoch = self.streams[0].steps_per_epoch
        self.models = [build.model(m.config, dataset) for m in members]
        self.txs = [build.optimizer(m.config, self.steps_per_epoch) for m in members]
        if strategy == "vmap":
            self._check_vmappable()
        self.mesh = mesh_lib.from_config(members[0].config) if mesh is None else mesh
        self.layout = mesh_lib.Layout(self.mesh, strategy == "vmap", len(members))
        self.layout.check_batch_sizes(
            size
            for s in self.streams
            for size in (s.batch_size, 0 if s.drop_last else s.dataset.num_train % s.batch_size)
        )
        makers = make_step if isinstance(make_step, (list, tuple)) else [make_step] * len(members)
        if len(makers) != len(members):
            raise ValueError(f"make_step: got {len(makers)} steps for {len(members)} members")
        if strategy == "vmap" and len(set(makers)) > 1:
            raise ValueError("different steps per member need strategy 'unrolled'")
        self.train_steps = [
            make(model, tx, m.config.loss, **build.step_options(m.config))
            for make, model, tx, m in zip(makers, self.models, self.txs, self.members, strict=True)
        ]
        self._step, self._eval = (
            self._unrolled(self.train_steps)
            if strategy == "unrolled"
            else self._vmapped(self.train_steps)
        )

    def __len__(self) -> int:
        return len(self.members)

    def _check_vmappable(self):
        """Members of one vmappable source; hand-made members ('none') with equal recipes."""
        kinds = {m.source for m in self.members}
        reference = self.members[0].config.to_dict()
        for m in self.members:
            if not sources.get(m.source).vmappable or (
                m.source == "none" and m.config.to_dict() != reference
            ):
                raise ValueError(
                    f"vmap needs members that differ only in seeds, k, init edits and data "
                    f"order; member {m.label!r} ({m.source}) differs in more: use strategy "
                    "'unrolled'"
                )
        if len(kinds) > 1:
            raise ValueError(
                f"vmap needs members of one source, got {sorted(kinds)}: use 'unrolled'"
            )

    def _unrolled(self, train_steps):
        eval_steps = [steps.make_eval_step(model) for model in self.models]

        def step(states, batches):
            out = [
                f(s, batches[j])
                for f, s, j in zip(train_steps, states, self.stream_of, strict=True)
            ]
            metrics = {k: jnp.stack([o[1][k] for o in out]) for k in out[0][1]}
            return tuple(o[0] for o in out), metrics

        def evaluate(states, images):  # (batch, member, classes)
            return jnp.stack([f(s, images) for f, s in zip(eval_steps, states, strict=True)], 1)

        return self.layout.jit_step(step, False), self.layout.jit_eval(evaluate)

    def _vmapped(self, train_steps):
        per_member = len(self.streams) > 1
        step = jax.vmap(train_steps[0], in_axes=(0, 0 if per_member else None))
        evaluate = jax.vmap(steps.make_eval_step(self.models[0]), in_axes=(0, None), out_axes=1)
        return self.layout.jit_step(step, per_member), self.layout.jit_eval(evaluate)

    def init(self):
        """The members' initial states, packed for the strategy (a fresh copy each call).

        Every member draws its weights with the reference member's (member 0's) model, from
        its own init seed, then casts them to its own dtype and applies its init edit: the
        dtype source compares one set of weights in three precisions. Bad edits raise here.
        """
        shape = self.dataset.image_shape
        states = []
        for m, model, tx, step in zip(
            self.members, self.models, self.txs, self.train_steps, strict=True
        ):
            state = steps.init_state(self.models[0], tx, m.config.seeds.init, shape)
            params = _cast(state.params, model.param_dtype)
            if m.init_edit is not None:
                params = m.init_edit.apply(params)
            state = state.replace(
                params=params,
                # as the model's own init: running statistics in at least float32
                batch_stats=_cast(
                    state.batch_stats, jnp.promote_types(model.param_dtype, jnp.float32)
                ),
                opt_state=tx.init(params),
            )
            states.append(step.init(state) if steps.carries_state(step) else state)
        return self._pack(states)

    def param_shapes(self):
        """Member 0's parameter tree as shapes and dtypes (jax.eval_shape: nothing computed)."""
        shape = self.dataset.image_shape
        return jax.eval_shape(
            lambda: steps.init_state(self.models[0], self.txs[0], 0, shape).params
        )

    def init_edits(self) -> list[dict | None]:
        """Per member: what its init edit changed (tensor, entry, values), or None."""
        params = steps.init_state(
            self.models[0], self.txs[0], self.members[0].config.seeds.init, self.dataset.image_shape
        ).params
        return [
            None if m.init_edit is None else m.init_edit.describe(_cast(params, model.param_dtype))
            for m, model in zip(self.members, self.models, strict=True)
        ]

    def _pack(self, states):
        packed = (
            tuple(states)
            if self.strategy == "unrolled"
            else jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        )
        return self.layout.put(packed, self.layout.state) if self.layout.active else packed

    def unpack(self, states) -> list[steps.TrainState]:
        """The member states as a list, whatever the strategy."""
        if self.strategy == "unrolled":
            return list(states)
        return [jax.tree.map(lambda x, i=i: x[i], states) for i in range(len(self.members))]

    def batches(self, step: int):
        """What the jitted step takes at `step`, on the device: one batch per distinct stream
        (unrolled), or one shared batch / a member-stacked batch (vmap)."""
        drawn = [s.batch(step) for s in self.streams]
        if self.strategy == "unrolled":
            batches, sharding = tuple(drawn), self.layout.batch
        elif len(drawn) == 1:
            batches, sharding = drawn[0], self.layout.batch
        else:
            batches = {k: np.stack([drawn[j][k] for j in self.stream_of]) for k in drawn[0]}
            sharding = self.layout.stacked_batch
        return self.layout.put(batches, sharding) if self.layout.active else jax.device_put(batches)

    def step(self, states, batches):
        """One lockstep step of every member: (states, {'loss', 'accuracy'}: one per member).
        `states` is donated."""
        return self._step(states, batches)

    def logits(self, states, batch_size: int = 256, split: str = "test") -> list[np.ndarray]:
        """Each member's logits on a whole split, in order (one jitted call per batch)."""
        stacked = np.concatenate(
            [
                np.asarray(self._eval(states, b["image"]))
                for b in eval_batches(self.dataset, split, batch_size)
            ]
        )
        return [stacked[:, i] for i in range(len(self.members))]

    def describe(self, config) -> dict:
        """What the recipe (a config) does not say about this ensemble: the strategy and, per
        member, its label, source, init edit, in-batch order and the config sections it
        changes. Saved in config.json, so that a different ensemble never resumes this run."""
        config = results.as_dict(config)
        return {
            "strategy": self.strategy,
            "members": [
                {
                    "label": m.label,
                    "source": m.source,
                    "init_edit": None if m.init_edit is None else dataclasses.asdict(m.init_edit),
                    "reduction_order": m.reduction_order,
                    "config_changes": {
                        k: v for k, v in m.config.to_dict().items() if config.get(k) != v
                    },
                }
                for m in self.members
            ],
        }


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), tree)
