"""Adam's edge of stability (Cohen et al. 2022, "Adaptive gradient methods at the edge of
stability"): the preconditioned sharpness and its threshold.

With its preconditioner P = diag(sqrt(v_hat) + eps) frozen, Adam's step on a mode of
P^-1/2 H P^-1/2 with eigenvalue h is heavy ball with momentum beta1 and step lr (1 - beta1)
(m <- beta1 m + (1 - beta1) g, w <- w - lr m / P), so it is linearly stable iff
lr h < (2 + 2 beta1) / (1 - beta1) (= 38 / lr for beta1 = 0.9, `threshold`); AdamW's
decoupled decay wd lowers that by the fraction lr wd / 2. The
`PreconditionedSharpness` observer measures the top h along training (its warm starts are
carried state, checkpointed as Sharpness's: a resumed run measures exactly what an
uninterrupted one does); the whole-state update map (linearisation.EdgeRadius) needs
nothing Adam-specific: m and v are leaves of the state it linearises.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from eos_jax.analysis import curvature
from eos_jax.analysis.sharpness import cold_starts, warm_start, warmed
from eos_jax.training import optim
from eos_jax.training.observers import Observer, record_fields


def threshold(lr: float, beta1: float, weight_decay: float = 0.0) -> float:
    """(2 - lr wd)(1 + beta1) / ((1 - beta1) lr): the largest stable preconditioned sharpness
    (of the data loss), wd AdamW's decoupled decay (w <- w - lr (u + wd w); 0: Adam). On a
    mode h the frozen-P step is x' = (1 - lr wd - a) x - lr beta1 m, m' = beta1 m +
    (1 - beta1) h x with a = lr (1 - beta1) h, whose root -1 sits at
    a = (2 - lr wd)(1 + beta1): the decay lowers the threshold by the fraction lr wd / 2, as
    coupled decay lowers GD's."""
    return (2 - lr * weight_decay) * (1 + beta1) / ((1 - beta1) * lr)


def decoupled_decay(optimizer) -> float:
    """AdamW's decoupled decay wd, which moves the threshold; 0 for Adam, whose coupled decay
    enters the moments (its threshold is not one of the data loss's preconditioned
    sharpness, and the one recorded is that of wd = 0)."""
    return float(optimizer.weight_decay) if optimizer.name == "adamw" else 0.0


class preconditioned:  # noqa: N801 (an operator, used as a function)
    """v -> P^-1/2 H P^-1/2 v for H given by flat products (a curvature.HessianOperator) and
    a flat diagonal P > 0."""

    def __init__(self, op, preconditioner: jax.Array):
        self.op, self.dtype = op, op.dtype
        self.scale = (1 / jnp.sqrt(preconditioner)).astype(op.dtype)

    def __call__(self, v: jax.Array) -> jax.Array:
        return self.scale * self.op(self.scale * v)


class PreconditionedSharpness(Observer):
    """Every `every_steps` steps and at the last (not at step 0, where v = 0), for each Adam /
    AdamW member: the top eigenvalue of P^-1/2 H P^-1/2, H the data-loss Hessian on the
    first `size` training examples (curvature.hvp_fn, as Sharpness's) and P the member's
    current preconditioner (optim.adam_preconditioner), by Lanczos (curvature.top_eigenvalues)
    warm-started from its last eigenvector. Records (kind 'preconditioned_sharpness'):
    preconditioned_sharpness, residual, num_hvps, threshold. SGD members get no record.

    The warm starts are what it carries (`carried`, sharpness.cold_starts' layout with one
    vector per member, saved with every checkpoint): a resumed run writes exactly the
    records of an uninterrupted one."""

    kind = "preconditioned_sharpness"
    fields = record_fields("preconditioned_sharpness", "threshold", "num_hvps")

    def __init__(self, every_steps: int, size=1000, chunk_size=1000, tol=1e-3, max_iters=200):
        self.every_steps, self.size, self.chunk_size = every_steps, size, chunk_size
        self.tol, self.max_iters = tol, max_iters

    def setup(self, ensemble, num_steps: int) -> None:
        self.check_every_steps("preconditioned sharpness")
        self.batches = curvature.train_chunks(ensemble.dataset, self.size, self.chunk_size)
        self.carried = None

    def start(self, run) -> None:
        """At step 0: no warm start yet (carried: cold_starts, one vector per member); a
        resumed run keeps the restored one."""
        if run.step == 0:
            self.carried = cold_starts(run, 1)

    def __call__(self, run) -> None:
        members = zip(run.ensemble.members, run.members(), strict=True)
        for i, (member, state) in enumerate(members):
            opt = member.config.optimizer
            if opt.get("name", "sgd") == "sgd":
                continue
            model, loss = run.ensemble.models[i], member.config.loss
            op = curvature.hvp_fn(model, loss, state.params, state.batch_stats, self.batches)
            p = optim.adam_preconditioner(state.opt_state, opt.beta2, opt.eps, opt.bias_correction)
            top = curvature.top_eigenvalues(
                preconditioned(op, op.space.flatten(p)),
                op.dim,
                init=warm_start(self.carried, i),
                tol=self.tol,
                max_iters=self.max_iters,
                seed=i,
            )
            self.carried = warmed(self.carried, i, top.eigenvectors)
            run.write(
                {
                    "step": run.step,
                    "member": i,
                    "label": member.label,
                    "kind": self.kind,
                    "preconditioned_sharpness": float(top.eigenvalues[0]),
                    "residual": float(top.residuals[0]),
                    "num_hvps": int(top.num_hvps),
                    "threshold": threshold(opt.lr, opt.beta1, decoupled_decay(opt)),
                }
            )
