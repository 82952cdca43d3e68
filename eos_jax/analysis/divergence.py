"""How far apart lockstep members are: in weights, momentum, predictions, and accuracy spread.

Weight distances are bits.diff_stats / bits.tree_diff (the paper's relative L1
D = 2*mean(|w1-w2|/(|w1|+|w2|)), L2, max abs, ulps, fraction of differing entries); this
module applies them to members and adds what lives in output space.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
import optax
import scipy.special

from eos_jax import bits
from eos_jax.training import steps


def momentum(opt_state):
    """The momentum buffers of an optim.sgd state (optax.trace), or None without momentum."""
    found = [s.trace for s in opt_state if isinstance(s, optax.TraceState)]
    return found[0] if found else None


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


def table1(accuracy: np.ndarray, seeds: Sequence[int], labels: Sequence[str]) -> list[dict]:
    """Paper Table 1 rows from accuracy[seed, perturbation]: one row per seed with its
    population std across perturbations, then a row of the std across seeds per perturbation."""
    accuracy = np.asarray(accuracy, np.float64)
    rows = [
        {
            "seed": str(s),
            **{lab: float(a) for lab, a in zip(labels, row, strict=True)},
            "std over perturbations": float(np.std(row)),
        }
        for s, row in zip(seeds, accuracy, strict=True)
    ]
    rows.append(
        {
            "seed": "std over seeds",
            **{lab: float(v) for lab, v in zip(labels, np.std(accuracy, 0), strict=True)},
            "std over perturbations": "",
        }
    )
    return rows
