"""The forced linear response of a twin pair, exact and in lockstep with training.

Member 0 of a two-member ensemble steps with the update map U, member 1 with U' (update_k
twins: the same map with another k; ulp_init twins: U' = U and an edited start). With w_t
member 0's whole floating state (parameters, momentum, BatchNorm statistics), w'_t member
1's, Delta_t = w'_t - w_t their actual difference and J_t the Jacobian of U at w_t
(`linearisation.tangent_map`, applied in float64), each actual step splits as

    Delta_{t+1} = J_t Delta_t + e_t                  e_t: what the linear map does not explain
    e_t         = f_t + N_t + r_t
    f_t = U'(w_t) - U(w_t)                           the perturbation's direct effect: member
                                                     1's step at member 0's state, same batch,
                                                     in the training dtype
    N_t = U(w_t + Delta_t) - U(w_t) - J_t Delta_t    the nonlinear part, in float64
    r_t = e_t - f_t - N_t                            the twins' own, different roundings: once
                                                     the states differ each rounds its step
                                                     differently, which f_t does not contain

A ReLU switch on which float32 and float64 disagree lands in r_t too. Where a pre-activation
lies within float32 rounding of zero, the twins' float32 steps can put it on two sides while
float64 at the same two states puts it on one (Delta jumps, N does not), or the reverse (N
jumps and r_t = -N_t cancels it: Delta does not jump, and delta^r overshoots Delta).

Two responses are propagated in float64 from Delta_0 at the start (0 for update_k
twins, the initial edit for ulp_init twins), never renormalised (they keep their size,
unlike a Lyapunov tangent):

    delta^f_{t+1} = J_t delta^f_t + f_t              the perturbation alone
    delta^r_{t+1} = J_t delta^r_t + f_t + r_t        the full rounding forcing

so Delta_{t+1} - delta^r_{t+1} = J_t (Delta_t - delta^r_t) + N_t: the twins leave the full
response only through the nonlinearity (a ReLU switch, a curvature term), and they leave
delta^f where their own roundings matter.

Why float64 separates the nonlinearity from rounding: U is evaluated with the recipe in
float64 (an fp64 copy of the model and optimiser: numerics param and compute dtype fp64),
at the training states cast exactly to float64. Its roundings are ~1e-16 relative, far
below the float32 roundings (~6e-8 relative per operation) that make up r_t, so what
remains of U(w + Delta) - U(w) - J Delta in float64 is the curvature of U, not rounding.
x64 must be on for the whole process (`numerics.enable_x64()` before any array exists, as
`eos_jax.studies.response.configure_numerics` does; the `dtype` source needs the same).

`split_step` is the computation of one step (traceable, jitted by the observer);
`LinearResponse` runs it after every training step, keeping copies of w_t, w'_t (the trainer
donates the state buffers to the next step) and carrying the two responses (`carried`,
saved with every checkpoint): a resumed run goes on from the saved responses and the
restored states, and writes exactly the records of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eos_jax import bits
from eos_jax.analysis.flat import StateSpace
from eos_jax.analysis.linearisation import tangent_map
from eos_jax.analysis.lyapunov import TangentState, TangentStep, plain
from eos_jax.training import build, steps
from eos_jax.training.observers import Observer, itstime, kind_records, read_series

# The norms a record holds, each in total and per state tensor (StateSpace paths).
QUANTITIES = (
    "delta",  # ||Delta_{t+1}||: the twins' actual difference
    "response_f",  # ||delta^f_{t+1}||: the response to f alone
    "response_r",  # ||delta^r_{t+1}||: the response to f + r
    "forcing_f",  # ||f_t||
    "forcing_r",  # ||r_t||
    "nonlinear",  # ||N_t||
    "unexplained",  # ||e_t||
    "gap_r",  # ||Delta_{t+1} - delta^r_{t+1}||: what the full response misses
    "gap_f",  # ||Delta_{t+1} - delta^f_{t+1}||
)
# Ratios: ||Delta|| / ||delta^r|| and ||Delta|| / ||delta^f|| (None where the response is 0).
RATIOS = {"ratio_r": "response_r", "ratio_f": "response_f"}


class Split(NamedTuple):
    """One step t -> t+1 of a twin pair, as flat float64 vectors over the floating state."""

    delta: jax.Array  # Delta_{t+1}
    response_f: jax.Array  # delta^f_{t+1}
    response_r: jax.Array  # delta^r_{t+1}
    forcing_f: jax.Array  # f_t
    forcing_r: jax.Array  # r_t
    nonlinear: jax.Array  # N_t
    unexplained: jax.Array  # e_t
    exact: jax.Array  # bool: the recomputed U(w_t) is the trainer's w_{t+1} bit for bit


def _as_float64(state):
    """The state with its floating leaves cast (exactly) to float64."""
    return jax.tree.map(lambda x: x.astype(jnp.float64) if bits.is_float(x) else x, state)


def _with_floats(state, floats_from):
    """`state`'s integer leaves (step, k) with the floating leaves of `floats_from`."""
    return jax.tree.map(lambda a, b: b if bits.is_float(a) else a, state, floats_from)


def flat64(state) -> jax.Array:
    """The floating leaves of a state as one float64 vector (exact for fp32 states)."""
    return StateSpace.of(state).flatten(state).astype(jnp.float64)


def steps_at(step, twin_step, state, twin_state, batch, twin_batch):
    """(U(w_t), U'(w_t)) in the training dtype: both maps at member 0's state (U' with member
    1's integer leaves, its k). Jit it alone, as the ensemble jits its unrolled members, so
    that U(w_t) has the trainer's bits (Split.exact checks it)."""
    return step(state, batch)[0], twin_step(_with_floats(twin_state, state), twin_batch)[0]


def split_step(
    step64,
    state,
    twin_state,
    batch,
    next_state,
    next_twin,
    stepped,
    response_f: jax.Array,
    response_r: jax.Array,
) -> Split:
    """The split of one step (module docstring). step64: U in float64 ((state, batch) ->
    (state, metrics)); state, twin_state: w_t, w'_t; next_state, next_twin: the trainer's
    w_{t+1}, w'_{t+1}; stepped: `steps_at(...)`, (U(w_t), U'(w_t)) in the training dtype;
    response_f, response_r: delta^f_t, delta^r_t. Traceable: jit it with step64 fixed."""
    x, x_twin = flat64(state), flat64(twin_state)
    delta = x_twin - x
    delta_next = flat64(next_twin) - flat64(next_state)
    u, u_twin = stepped
    forcing_f = flat64(u_twin) - flat64(u)
    exact = jnp.all(StateSpace.of(u).flatten(u) == StateSpace.of(next_state).flatten(next_state))
    # U, U(w + Delta) and J applied to Delta, delta^f, delta^r: float64, at w_t
    s64 = _as_float64(state)
    shifted = _with_floats(s64, StateSpace.of(s64).unflatten(x_twin))  # w_t + Delta_t exactly
    u64 = flat64(step64(s64, batch)[0])
    u64_shifted = flat64(step64(shifted, batch)[0])
    tangents = jnp.stack([delta, response_f, response_r])
    j_delta, j_f, j_r = jax.vmap(lambda t: tangent_map(step64, s64, batch, t))(tangents)
    nonlinear = u64_shifted - u64 - j_delta
    unexplained = delta_next - j_delta
    forcing_r = unexplained - forcing_f - nonlinear
    return Split(
        delta=delta_next,
        response_f=j_f + forcing_f,
        response_r=j_r + forcing_f + forcing_r,
        forcing_f=forcing_f,
        forcing_r=forcing_r,
        nonlinear=nonlinear,
        unexplained=unexplained,
        exact=exact,
    )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _norms(vectors: jax.Array, segments: tuple, count: int):
    """Total and per-segment L2 norms of the rows of `vectors` (rows, dim)."""
    ids = jnp.asarray(np.repeat(np.arange(count), np.diff((0, *segments))))
    squares = jax.vmap(lambda v: jax.ops.segment_sum(v * v, ids, num_segments=count))(vectors)
    return jnp.sqrt(jnp.sum(squares, axis=1)), jnp.sqrt(squares)


def _plain_step(step):
    """The plain train step under a member's step (a TangentStep carries one)."""
    return step.train_step if isinstance(step, TangentStep) else step


def _is_train_step(step) -> bool:
    return getattr(step, "__qualname__", "") == "make_train_step.<locals>.train_step"


def _plain_state(state):
    return plain(state) if isinstance(state, TangentState) else state


def _copy(state):
    """A copy of a state that outlives the trainer's donation of its buffers."""
    return jax.block_until_ready(jax.tree.map(lambda x: jnp.array(x, copy=True), state))


@dataclasses.dataclass(frozen=True)
class ResponseSummary:
    """LinearResponse's part of the twin's summary: ||Delta||, ||delta^f||, ||delta^r|| at the
    last step observed."""

    delta_end: float
    response_f_end: float
    response_r_end: float


class LinearResponse(Observer):
    """The forced linear response of a twin pair (module docstring), kind 'response'.

    Runs after every step up to `last_step` (it must: the responses are propagated step by
    step; None: to the end) and writes a record every `every_steps` steps, at step 0 and at
    the last step observed. Member 1's record holds,
    at that step: the norms of QUANTITIES in total and per state tensor ('per_tensor':
    {StateSpace path: {quantity: norm}}; f, r, N and e are those of the step just taken,
    not accumulated since the previous record), ratio_r = ||Delta|| / ||delta^r||, ratio_f =
    ||Delta|| / ||delta^f|| (None where the response is 0) and step_exact (the observer's
    recomputed U(w_t) is the trainer's w_{t+1} bit for bit, as it must be for f_t to be the
    perturbation alone). Member 0's record holds nothing. It carries delta^f_t and
    delta^r_t ({'response_f', 'response_r'}: float64 vectors), checkpointed with the states.
    """

    at_start = True
    kind = "response"

    def __init__(self, every_steps: int = 1, last_step: int | None = None):
        self.every_steps, self.last_step = every_steps, last_step
        self._previous = None  # (step, w_t copy, w'_t copy)

    def setup(self, ensemble, num_steps: int) -> None:
        """ValueError unless the ensemble is a twin pair this observer can split."""
        self.check_every_steps("response")
        if len(ensemble) != 2:
            raise ValueError(f"linear response needs a twin pair (2 members), got {len(ensemble)}")
        if ensemble.strategy != "unrolled" or ensemble.mesh.size > 1:
            raise ValueError(
                "linear response needs strategy 'unrolled' on one device (its recomputed "
                f"steps must have the ensemble's bits), got {ensemble.strategy!r} on "
                f"{ensemble.mesh.size} devices"
            )
        if not jax.config.jax_enable_x64:
            raise ValueError(
                "linear response needs x64 for its float64 copy: call numerics.enable_x64() "
                "before creating arrays (experiments.response does)"
            )
        configs = [m.config.to_dict() for m in ensemble.members]
        for c in configs:
            c["optimizer"] = {k: v for k, v in c["optimizer"].items() if k != "k"}
        if configs[0] != configs[1]:
            changed = sorted(k for k in configs[0] if configs[0][k] != configs[1].get(k))
            raise ValueError(
                f"linear response: the twins' recipes differ in {', '.join(changed)}; they "
                "may differ only in the perturbation (optimizer.k, an init edit, in-batch order)"
            )
        config = ensemble.members[0].config
        if config.optimizer.get("arithmetic", "as_written") != "as_written":
            raise ValueError(
                f"linear response supports optimizer.arithmetic='as_written' (its float64 "
                f"copy), got {config.optimizer.arithmetic!r}"
            )
        train_steps = [_plain_step(s) for s in ensemble.train_steps]
        if not all(_is_train_step(s) for s in train_steps):
            raise ValueError(
                "linear response needs the members' steps to be steps.make_train_step (or a "
                "lyapunov.TangentStep over it), so that its float64 copy is the same map"
            )
        config64 = config.copy_and_resolve_references()
        config64.numerics.param_dtype = config64.numerics.compute_dtype = "fp64"
        model64 = build.model(config64, ensemble.dataset)
        tx64 = build.optimizer(config64, ensemble.steps_per_epoch)
        step64 = steps.make_train_step(model64, tx64, config64.loss, **build.step_options(config))
        self._steps_at = jax.jit(functools.partial(steps_at, *train_steps))
        self._split = jax.jit(functools.partial(split_step, step64))
        self._streams = [ensemble.streams[j] for j in ensemble.stream_of]
        self._previous = self.carried = None

    def due(self, step: int, run) -> bool:
        """Every step it watches (up to last_step); it records only where its cadence says."""
        return itstime(step, **(self.cadence(run) | {"every_steps": 1}))

    def start(self, run) -> None:
        """At step 0 both responses start from Delta_0; at a resumed step they are those
        restored. Keeps copies of the states at this step, for the split of the next."""
        states = [_plain_state(s) for s in run.members()]
        if run.step == 0:
            delta = flat64(states[1]) - flat64(states[0])
            self.carried = {"response_f": delta, "response_r": delta}
        self._previous = (run.step, *map(_copy, states))

    def __call__(self, run) -> None:
        states = [_plain_state(s) for s in run.members()]
        split = None
        t, state, twin = self._previous
        if run.step != t:  # the step t -> t + 1 just taken
            if run.step != t + 1:
                raise RuntimeError(
                    f"linear response observes every step: called at step {run.step} after "
                    f"step {t} (start(run) begins at another step)"
                )
            batches = [jax.device_put(s.batch(t)) for s in self._streams]
            stepped = self._steps_at(state, twin, *batches)
            carried = self.carried
            split = self._split(
                state,
                twin,
                batches[0],
                *states,
                stepped,
                carried["response_f"],
                carried["response_r"],
            )
            self.carried = {"response_f": split.response_f, "response_r": split.response_r}
            self._previous = (run.step, *map(_copy, states))
        if super().due(run.step, run):
            record = self._record(states, split, **self.carried)
            self.write(run, [{}, record])

    def _record(self, states, split, response_f, response_r) -> dict:
        space = StateSpace.of(states[0])
        slices = space.float_slices()
        paths = tuple(slices)
        segments = tuple(s.stop for s in slices.values())
        delta = flat64(states[1]) - flat64(states[0])
        rows = {"delta": delta, "response_f": response_f, "response_r": response_r}
        rows.update(gap_r=delta - response_r, gap_f=delta - response_f)
        if split is not None:
            rows.update(
                forcing_f=split.forcing_f,
                forcing_r=split.forcing_r,
                nonlinear=split.nonlinear,
                unexplained=split.unexplained,
            )
        total, per = _norms(jnp.stack(list(rows.values())), segments, len(paths))
        total, per = np.asarray(total), np.asarray(per)
        record = {q: None for q in QUANTITIES}
        record.update({q: float(total[i]) for i, q in enumerate(rows)})
        for name, of in RATIOS.items():
            record[name] = record["delta"] / record[of] if record[of] > 0 else None
        record["per_tensor"] = {
            path: {q: float(per[i, j]) for i, q in enumerate(rows)} for j, path in enumerate(paths)
        }
        record["step_exact"] = None if split is None else bool(split.exact)
        return record

    @classmethod
    def read(cls, records):
        """A Series with QUANTITIES, RATIOS and step_exact (member 1's row;
        member 0's is NaN), and per tensor 'quantity/path'."""
        tensors = next(
            (r["per_tensor"] for r in kind_records(records, cls.kind) if "per_tensor" in r), {}
        )
        fields = {
            name: (lambda r, name=name: r.get(name))
            for name in (*QUANTITIES, *RATIOS, "step_exact")
        }
        for path in tensors:
            for q in QUANTITIES:
                fields[f"{q}/{path}"] = lambda r, p=path, q=q: (
                    r.get("per_tensor", {}).get(p, {}).get(q)
                )
        return read_series(records, cls.kind, fields)

    @staticmethod
    def summary(series) -> ResponseSummary | None:
        """The pair's summary from a `read` Series (member 1's record): Delta, delta^f and
        delta^r at the last step observed (None without records)."""
        if len(series.steps) == 0:
            return None
        q = ("delta", "response_f", "response_r")
        return ResponseSummary(*(float(series[name][1, -1]) for name in q))

    def summarize(self, records, summary) -> None:
        end = self.summary(self.read(records))
        if end is not None:
            summary.members[1].add(end)
