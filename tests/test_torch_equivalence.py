"""optim.sgd(arithmetic="torch_cpu") against PyTorch itself, bit for bit (needs torch).

torch.optim.SGD with MultiStepLR for k = 1, and the authors' perturbed step written in torch
(`d = d / k; p.add_(d, alpha=-lr * k)`, lr divided by 10 at each boundary) for odd k.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eos_jax.training import optim

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(
    not optim.xla_fuses_multiply_add()
    or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="needs FMA in both XLA (a*b + c contracted) and PyTorch's CPU kernels (AVX2+)",
)

LR, MU, WD, BOUNDARIES, STEPS = 0.1, 0.9, 5e-4, (2, 4, 6), 8
SHAPES = {"conv": (3, 3, 4, 5), "bias": (37,), "dense": (13, 7)}


def data():
    rng = np.random.default_rng(0)
    w0 = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
    grads = [
        {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()} for _ in range(STEPS)
    ]
    return w0, grads


def eos_run(tx, w0, grads):
    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    w, state = jax.tree.map(jnp.asarray, w0), tx.init(w0)
    for g in grads:
        w, state = step(w, state, g)
    return {n: np.asarray(v) for n, v in w.items()}


MOMENTA = [(0.0, False, WD), (MU, False, WD), (MU, True, WD), (MU, True, 0.0)]


@pytest.mark.parametrize("momentum, nesterov, weight_decay", MOMENTA)
def test_torch_cpu_is_torch_optim_sgd(momentum, nesterov, weight_decay):
    w0, grads = data()
    params = [torch.tensor(w0[n]) for n in SHAPES]
    opt = torch.optim.SGD(params, LR, momentum, nesterov=nesterov, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(BOUNDARIES), gamma=0.1)
    for g in grads:
        for p, n in zip(params, SHAPES, strict=True):
            p.grad = torch.tensor(g[n])
        opt.step()
        sched.step()
    schedule = optim.step_decay(LR, BOUNDARIES, factor=0.1)
    tx = optim.sgd(schedule, momentum, nesterov, weight_decay, arithmetic="torch_cpu")
    ours = eos_run(tx, w0, grads)
    for p, n in zip(params, SHAPES, strict=True):
        np.testing.assert_array_equal(ours[n], p.detach().numpy(), err_msg=n)


def authors_step_in_torch(w0, grads, momentum, nesterov, weight_decay, k):
    """torch.optim.SGD's single-tensor step with the authors' two lines, lr / 10 per boundary."""
    params = {n: torch.tensor(v) for n, v in w0.items()}
    bufs, lr = {}, LR
    for t, g in enumerate(grads):
        if t in BOUNDARIES:
            lr = lr / 10
        for n, p in params.items():
            d = torch.tensor(g[n]).add(p, alpha=weight_decay)
            if momentum:
                if n not in bufs:
                    bufs[n] = d.clone()
                else:
                    bufs[n].mul_(momentum).add_(d)
                d = d.add(bufs[n], alpha=momentum) if nesterov else bufs[n]
            d = d / k
            p.add_(d, alpha=-lr * k)
    return {n: p.numpy() for n, p in params.items()}


@pytest.mark.parametrize("momentum, nesterov, weight_decay", MOMENTA)
def test_torch_cpu_is_the_authors_perturbed_step_on_cpu(momentum, nesterov, weight_decay):
    w0, grads = data()
    schedule = optim.step_decay(LR, BOUNDARIES, factor=None, divisor=10)
    for k in (1, 3, 5, 7, 9, 11):
        tx = optim.sgd(schedule, momentum, nesterov, weight_decay, k, arithmetic="torch_cpu")
        ours = eos_run(tx, w0, grads)
        theirs = authors_step_in_torch(w0, grads, momentum, nesterov, weight_decay, k)
        for n in SHAPES:
            np.testing.assert_array_equal(ours[n], theirs[n], err_msg=f"{n}, k={k}")


def test_as_written_is_not_torch_with_momentum():
    """The default keeps its own arithmetic: with momentum it differs from PyTorch's bits."""
    w0, grads = data()
    schedule = optim.step_decay(LR, BOUNDARIES, factor=None, divisor=10)
    ours = eos_run(optim.sgd(schedule, MU, True, WD, k=3), w0, grads)
    theirs = authors_step_in_torch(w0, grads, MU, True, WD, 3)
    assert any(not np.array_equal(ours[n], theirs[n]) for n in SHAPES)
