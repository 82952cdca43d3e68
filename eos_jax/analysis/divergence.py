"""How far apart lockstep members are: in weights, momentum, predictions, and accuracy spread.

Weight distances are bits.diff_stats / bits.tree_diff (the paper's relative L1
D = 2*mean(|w1-w2|/(|w1|+|w2|)), L2, max abs, ulps, fraction of differing entries); this
module applies them to members, adds what lives in output space, and provides the trainer's
observers that record them: MemberDistance (every member against member 0) and WatchTensor
(one tensor, with maps of where it differs).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import optax
import scipy.special

from eos_jax import bits
from eos_jax.training import steps
from eos_jax.training.observers import Observer, itstime, record_fields


def momentum(opt_state):
    """The momentum buffers of an optim.sgd state (optax.trace's, found by name), or None."""
    return optax.tree_utils.tree_get(opt_state, "trace")


def _as_dtype_of(reference, tree):
    """tree cast to reference's dtypes, so members of different precision can be compared."""
    return jax.tree.map(lambda r, x: np.asarray(x).astype(np.asarray(r).dtype), reference, tree)


def tree_distance(reference, other) -> dict[str, dict[str, float]]:
    """bits.tree_diff per tensor and 'total', after casting `other` to reference's dtypes."""
    return bits.tree_diff(reference, _as_dtype_of(reference, other))


def state_distance(reference, other) -> dict[str, dict | None]:
    """Distances of params and momentum buffers (None where there is no momentum)."""
    ref_mom, other_mom = momentum(reference.opt_state), momentum(other.opt_state)
    return {
        "params": tree_distance(reference.params, other.params),
        "momentum": None if ref_mom is None else tree_distance(ref_mom, other_mom),
    }


def tensor_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| as a 2-d map: conv kernels (..., C_in, C_out) -> mean over the spatial axes,
    as (C_out, C_in); a dense kernel (in, out) -> (out, in); a vector -> one row."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if diff.ndim == 1:
        return diff[None, :]
    return diff.reshape(-1, *diff.shape[-2:]).mean(axis=0).T


def churn(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Fraction of examples on which the two members predict different classes
    (steps.predictions: argmax, or logit > 0 for a single-logit binary model)."""
    pred_a, pred_b = (np.asarray(steps.predictions(np.asarray(x))) for x in (logits_a, logits_b))
    return float(np.mean(pred_a != pred_b))


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (examples, classes); a single logit z is the two classes (0, z)."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim == 1:
        logits = np.stack([np.zeros_like(logits), logits], -1)
    return scipy.special.softmax(logits, -1)


def softmax_l2(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Mean over examples of the L2 distance between the two members' class probabilities."""
    diff = _probabilities(logits_a) - _probabilities(logits_b)
    return float(np.mean(np.linalg.norm(diff, axis=-1)))


# The statistics of bits.diff_stats, in its order: what MemberDistance and WatchTensor read.
DIFF_STATS = ("max_ulp", "max_abs", "mean_abs", "max_rel", "rel_l1", "l2", "frac_differ")


@dataclasses.dataclass(frozen=True)
class DistanceSummary:
    """MemberDistance's part of a member's summary, against member 0 at the last record."""

    churn: float
    softmax_l2: float
    params_max_ulp: float
    params_max_abs: float
    params_mean_abs: float
    params_max_rel: float
    params_rel_l1: float  # the weight distance D
    params_l2: float
    params_frac_differ: float


class MemberDistance(Observer):
    """Per member against member 0: churn, softmax L2 and the distances of params and
    momentum (kind 'divergence'); the summary adds the last values and their means."""

    kind = "divergence"
    fields = {
        **record_fields("churn", "softmax_l2"),
        **{f"params_{k}": (lambda r, k=k: r["params"]["total"][k]) for k in DIFF_STATS},
    }

    def __init__(self, every_steps: int):
        self.every_steps = every_steps

    def __call__(self, run) -> None:
        logits, members = run.test_logits(), run.members()
        self.write(
            run,
            [
                {
                    "churn": churn(logits[0], x),
                    "softmax_l2": softmax_l2(logits[0], x),
                    **state_distance(members[0], m),
                }
                for x, m in zip(logits, members, strict=True)
            ],
        )

    @staticmethod
    def summary(series, member: int) -> DistanceSummary:
        """One member's summary from a `read` Series: churn, softmax L2 and the parameter
        distances (params_rel_l1: the weight distance D) at the last recorded step."""
        names = ("churn", "softmax_l2", *(f"params_{k}" for k in DIFF_STATS))
        return DistanceSummary(**{name: float(series[name][member, -1]) for name in names})

    def summarize(self, records, summary) -> None:
        series = self.read(records)
        for i, member in enumerate(summary.members):
            member.add(self.summary(series, i))
        others = summary.members[1:]

        def mean(field: str) -> float:
            return float(np.mean([getattr(m, field) for m in others])) if others else 0.0

        summary.mean_churn, summary.mean_softmax_l2 = mean("churn"), mean("softmax_l2")
        summary.mean_params_rel_l1 = mean("params_rel_l1")


def map_path(workdir: str, step: int) -> str:
    """Where WatchTensor saves the watched tensor's maps at `step` (arrays 'member<i>')."""
    return os.path.join(workdir, _map_name(step))


def _map_name(step: int) -> str:
    return os.path.join("maps", f"step_{step:08d}.npz")


class WatchTensor(Observer):
    """One tensor of each member against member 0's, from step 0 on (kind 'watch', with
    bits.diff_stats); at map_steps its tensor_map per member goes to maps/step_<s>.npz."""

    at_start = True
    kind = "watch"
    fields = record_fields(*DIFF_STATS)

    def __init__(self, tensor: str, every_steps: int, map_steps=()):
        self.tensor, self.every_steps, self.map_steps = tensor, every_steps, tuple(map_steps)

    def setup(self, ensemble, num_steps: int) -> None:
        """ValueError unless the tensor exists, every_steps >= 1 and every map step is a
        watched step (0 or a multiple of every_steps, up to num_steps)."""
        shapes = jax.tree_util.tree_flatten_with_path(ensemble.param_shapes())[0]
        tensors = [bits.path_name(path) for path, _ in shapes]
        if self.tensor not in tensors:
            raise ValueError(f"no tensor {self.tensor!r} to watch; known: {', '.join(tensors)}")
        self.check_every_steps("watch")
        bad = [
            s
            for s in self.map_steps
            if not isinstance(s, int) or not 0 <= s <= num_steps or not itstime(s, **self.cadence())
        ]
        if bad:
            raise ValueError(
                f"map_steps {bad} are not watched steps (0 or multiples of "
                f"{self.every_steps} up to {num_steps})"
            )

    def cadence(self, run=None) -> dict:
        """From step 0 on, every every_steps steps; not at the run's last step (the maps are
        comparable between runs of different lengths)."""
        return {"every_steps": self.every_steps, "at_start": True}

    def __call__(self, run) -> None:
        leaves = [bits.named_leaves(m.params)[self.tensor] for m in run.members()]
        ref = leaves[0]
        others = [x.astype(ref.dtype) for x in leaves]
        self.write(run, [{"tensor": self.tensor, **bits.diff_stats(ref, x)} for x in others])
        if run.step in self.map_steps:
            maps = {f"member{i}": tensor_map(ref, x) for i, x in enumerate(others)}
            run.save_arrays(_map_name(run.step), maps)
