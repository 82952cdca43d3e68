"""PyTorch-equivalent SGD and the paper's perturbed update (lr*k)*(d/k)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eos_jax import bits, numerics
from eos_jax.training import optim

LR, MU, WD, BOUNDARIES = 0.1, 0.9, 5e-4, (3, 5)


def torch_sgd_numpy(w, grads, nesterov):
    """torch.optim.SGD's update written out in NumPy float32, with MultiStepLR(gamma=0.1)."""
    lr, buf = LR, None
    for t, g in enumerate(grads):
        if t in BOUNDARIES:
            lr = lr * 0.1  # MultiStepLR multiplies the Python float
        d = g + np.float32(WD) * w
        buf = d.copy() if buf is None else np.float32(MU) * buf + d
        d = d + np.float32(MU) * buf if nesterov else buf
        w = w - np.float32(lr) * d
    return w


NO_FMA = numerics.NO_FMA_XLA_FLAGS[0]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_pytorch_update(nesterov):
    """Bit-for-bit where XLA cannot fuse multiply-adds; otherwise within FMA rounding.

    XLA:CPU contracts fused a*b + c into one FMA instruction (one rounding instead of two);
    NumPy rounds twice. Each step can then differ by about one ulp per multiply-add (4 per
    step here), so after 7 steps we allow 32 ulps of the largest weight.
    """
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(64,)).astype(np.float32)
    grads = [rng.normal(size=(64,)).astype(np.float32) for _ in range(7)]
    tx = optim.sgd(optim.step_decay(LR, BOUNDARIES), MU, nesterov, WD)
    update = jax.jit(tx.update)
    w, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    for g in grads:
        u, state = update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, u)
    expected = torch_sgd_numpy(w0, grads, nesterov)
    if NO_FMA in os.environ.get("XLA_FLAGS", ""):
        np.testing.assert_array_equal(np.asarray(w), expected)
    else:
        ulp = np.spacing(np.max(np.abs(expected)))
        np.testing.assert_allclose(np.asarray(w), expected, rtol=0, atol=32 * ulp)


def test_sgd_matches_pytorch_bit_for_bit_without_fma():
    env = {**os.environ, "XLA_FLAGS": NO_FMA}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_sgd_matches_pytorch_update",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:]


def small_training_run(tx, num_steps=6):
    """A few steps of a tiny tanh MLP on fixed random data; returns the params hash."""
    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "w1": jax.random.normal(keys[0], (20, 32)) / 4,
        "w2": jax.random.normal(keys[1], (32, 5)),
    }
    x = jax.random.normal(keys[2], (num_steps, 16, 20))

    def loss(p, xb):
        return jnp.mean((jnp.tanh(xb @ p["w1"]) @ p["w2"]) ** 2)

    @jax.jit
    def step(p, s, xb):
        u, s = tx.update(jax.grad(loss)(p, xb), s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    for xb in x:
        params, state = step(params, state, xb)
    return bits.tree_hash(params)


def test_perturbation_k_one_and_powers_of_two_are_plain_sgd_odd_k_is_not():
    schedule = optim.step_decay(LR, BOUNDARIES)
    plain = optax.chain(
        optax.add_decayed_weights(WD), optax.trace(MU, nesterov=True), optax.sgd(schedule)
    )
    reference = small_training_run(plain)
    for k in (1, 2, 4):
        assert small_training_run(optim.sgd(schedule, MU, True, WD, k=k)) == reference, k
    for k in (3, 5, 7):
        assert small_training_run(optim.sgd(schedule, MU, True, WD, k=k)) != reference, k


def test_k_is_traced_state_not_a_constant():
    tx = optim.sgd(0.1, k=3)
    state = tx.init({"w": jnp.ones(3)})
    assert int(optim.perturbation_k(state)) == 3
    assert isinstance(optim.perturbation_k(state), jax.Array)


def test_step_decay_values_and_validation():
    schedule = optim.step_decay(0.1, [2, 4])
    values = [float(schedule(jnp.int32(t))) for t in range(6)]
    assert values == [
        np.float32(v) for v in (0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1, 0.1 * 0.1 * 0.1, 0.1 * 0.1 * 0.1)
    ]
    with pytest.raises(ValueError, match="increasing"):
        optim.step_decay(0.1, [4, 2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "positive integer, got 0"),
        ({"k": 1.5}, "got 1.5"),
        ({"nesterov": True}, "nesterov needs momentum"),
    ],
)
def test_bad_optimizer_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.sgd(0.1, **kwargs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_odd_k_moves_each_update_by_at_most_two_ulps(dtype):
    """(lr*k)*(d/k) has three roundings where lr*d has one: each within half an ulp, so the
    update differs from plain SGD's by at most 2 ulps, and on some entries by at least 1."""
    d = jax.random.normal(jax.random.key(0), (4096,), dtype)
    params = jnp.zeros_like(d)

    def update(k):
        tx = optim.sgd(0.1, k=k)
        return np.asarray(tx.update(d, tx.init(params), params)[0])

    plain = update(1)
    for k in (3, 5, 7, 9, 11):
        ulps = bits.ulp_distance(update(k), plain)
        assert 0 < ulps.max() <= 2, (k, ulps.max())


def test_perturbed_update_is_computed_as_written():
    """-(lr*k) * (d/k) in float32, op by op as NumPy does it (XLA must not turn d/k into
    d * (1/k), which for lr = 0.1, k = 5 would silently give plain SGD's bits)."""
    d = jax.random.normal(jax.random.key(0), (4096,), jnp.float32)
    lr, d_np = np.float32(0.1), np.asarray(d)
    for k in (3, 5, 7):
        tx = optim.sgd(0.1, k=k)
        update = np.asarray(jax.jit(tx.update)(d, tx.init(d), d)[0])
        np.testing.assert_array_equal(update, -((lr * np.float32(k)) * (d_np / np.float32(k))))
