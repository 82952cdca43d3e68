"""PyTorch-equivalent SGD and the paper's perturbed update (lr*k)*(d/k)."""

import os
import subprocess
import sys
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eos_jax import bits, numerics
from eos_jax.models.layers import drawn_flat
from eos_jax.training import optim

LR, MU, WD, BOUNDARIES = 0.1, 0.9, 5e-4, (3, 5)


def two_rounding_sgd_numpy(w, grads, nesterov):
    """torch.optim.SGD's formulas in NumPy float32, every product and sum rounded on its own,
    with MultiStepLR(gamma=0.1). Not PyTorch's arithmetic: PyTorch fuses three of the four
    multiply-adds (torch_sgd_numpy below; tests/test_torch_equivalence.py)."""
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
def test_as_written_sgd_matches_two_rounding_model(nesterov):
    """Bit-for-bit where XLA cannot fuse multiply-adds; otherwise within FMA rounding.

    XLA:CPU contracts fused a*b + c into one FMA instruction (one rounding instead of two);
    the model rounds twice. Each step can then differ by about one ulp per multiply-add (4 per
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
    expected = two_rounding_sgd_numpy(w0, grads, nesterov)
    if NO_FMA in os.environ.get("XLA_FLAGS", ""):
        np.testing.assert_array_equal(np.asarray(w), expected)
    else:
        ulp = np.spacing(np.max(np.abs(expected)))
        np.testing.assert_allclose(np.asarray(w), expected, rtol=0, atol=32 * ulp)


def test_as_written_sgd_is_bit_identical_to_two_rounding_model_without_fma():
    env = {**os.environ, "XLA_FLAGS": NO_FMA}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_as_written_sgd_matches_two_rounding_model",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:]


def fma32(a, b, c):
    """float32 a*b + c rounded once, exactly (the reference for an FMA, vectorised).

    The float32 product is exact in float64 (48 <= 53 bits), and TwoSum gives the exact
    error e of s = fl64(a*b + c). Rounding s to odd (last bit set where e != 0), then to
    float32, is the correctly rounded result since 53 >= 24 + 2 (Boldo and Melquiond 2008);
    fl32(s) alone can round twice (test_fma32_reference_is_exact).
    """
    a, b, c = (np.asarray(x, np.float32).astype(np.float64) for x in np.broadcast_arrays(a, b, c))
    ab = a * b
    s = ab + c
    c_part = s - ab
    e = (ab - (s - c_part)) + (c - c_part)
    fix = (e != 0) & (s.view(np.int64) & 1 == 0)
    return np.where(fix, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s).astype(np.float32)


def round_to_float32(exact: Fraction) -> np.float32:
    """The float32 nearest to a rational, ties to even (float() then float32 rounds twice)."""
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess]
    candidates.append(np.nextafter(guess, np.float32(np.inf)))
    return min(
        candidates, key=lambda f: (abs(Fraction(float(f)) - exact), int(f.view(np.int32)) & 1)
    )


def test_fma32_reference_is_exact():
    """fma32 against exact rational arithmetic on random triples, and on a case where
    rounding the float64 sum to float32 rounds twice and lands one ulp off."""
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(3, 500)).astype(np.float32)
    exact = [
        round_to_float32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
        for x, y, z in zip(a, b, c, strict=True)
    ]
    np.testing.assert_array_equal(fma32(a, b, c), exact)
    # a*b + c = 2^30 + 64 + 2^-40: float64 drops 2^-40, leaving a float32 tie (to even: 2^30)
    x, y, z = np.float32(8 + 2**-20), np.float32(-8 + 2**-20), np.float32(2**30 + 128)
    exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
    assert exact == 2**30 + 64 + Fraction(1, 2**40)
    assert fma32(x, y, z) == round_to_float32(exact) == np.float32(2**30 + 128)
    assert np.float32(np.float64(x) * np.float64(y) + np.float64(z)) == np.float32(2**30)


def torch_sgd_numpy(w, grads, momentum, nesterov, lrs, k, reciprocal):
    """The authors' step on PyTorch's arithmetic in NumPy float32: wd, Nesterov and the step
    each one FMA, mu * buf rounded before + d, alpha = float32(-lr * k) from the double,
    d / k divided (CPU) or multiplied by float32(1 / k) (CUDA, reciprocal=True)."""
    buf = None
    for lr, g in zip(lrs, grads, strict=True):
        d = fma32(np.float32(WD), w, g)
        if momentum:
            buf = d.copy() if buf is None else np.float32(momentum) * buf + d
            d = fma32(np.float32(momentum), buf, d) if nesterov else buf
        q = d * (np.float32(1) / np.float32(k)) if reciprocal else d / np.float32(k)
        w = fma32(np.float32(-lr * k), q, w)
    return w


needs_fma = pytest.mark.skipif(
    not optim.xla_fuses_multiply_add(),
    reason="XLA here does not contract a*b + c into FMA (no AVX2/FMA, or --xla_cpu_max_isa "
    "below AVX2): the torch arithmetics are not PyTorch's there",
)


@needs_fma
@pytest.mark.parametrize("arithmetic", ["torch_cpu", "authors_cuda"])
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (MU, False), (MU, True)])
def test_torch_arithmetics_match_their_numpy_model(arithmetic, momentum, nesterov):
    """Bit for bit, float32, k in 1..11 and lr 0.1 / 10 / 100 / 1000 (the authors' division),
    several tensors in one jitted step (where optax.apply_updates adds the update)."""
    rng = np.random.default_rng(1)
    w0 = {"a": rng.normal(size=(37,)), "b": rng.normal(size=(5, 13))}
    w0 = {n: v.astype(np.float32) for n, v in w0.items()}
    grads = [
        {n: rng.normal(size=v.shape).astype(np.float32) for n, v in w0.items()} for _ in range(8)
    ]
    schedule = optim.step_decay(LR, (2, 4, 6), factor=None, divisor=10)
    lrs = [schedule.values[int(schedule.piece(t))] for t in range(8)]
    for k in (1, 3, 5, 7, 9, 11):
        tx = optim.sgd(schedule, momentum, nesterov, WD, k=k, arithmetic=arithmetic)

        @jax.jit
        def step(p, s, g, tx=tx):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        w, state = jax.tree.map(jnp.asarray, w0), tx.init(w0)
        for g in grads:
            w, state = step(w, state, g)
        for name in w0:
            expected = torch_sgd_numpy(
                w0[name],
                [g[name] for g in grads],
                momentum,
                nesterov,
                lrs,
                k,
                arithmetic == "authors_cuda",
            )
            np.testing.assert_array_equal(np.asarray(w[name]), expected, err_msg=f"k={k}")


def test_torch_arithmetics_round_lr_times_k_once_from_double():
    """alpha = float32(-lr * k) from the double, where as_written rounds lr first: for lr = 0.1
    they differ at k = 9, for lr = 0.01 at k = 5 and 9 (so those k are other perturbations)."""
    for lr, differing in ((0.1, {9}), (0.01, {5, 9})):
        for k in (1, 3, 5, 7, 9, 11):
            tx = optim.sgd(lr, k=k, arithmetic="torch_cpu")
            alpha = tx.init(jnp.zeros(1))[-1].alpha[0]
            assert alpha == np.float32(-lr * k)
            as_written = -(np.float32(lr) * np.float32(k))
            assert (alpha != as_written) == (k in differing), (lr, k)


def small_training_run(tx, num_steps=6):
    """A few steps of a tiny tanh MLP on fixed random data; returns the params hash."""
    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "w1": jax.random.normal(keys[0], (20, 32)) / 4,
        "w2": jax.random.normal(keys[1], (32, 5)),
    }
    x = drawn_flat(keys[2], (num_steps, 16, 20), float, jax.random.normal)

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


@pytest.mark.parametrize("arithmetic", optim.ARITHMETICS)
def test_k_is_traced_state_found_by_name(arithmetic):
    tx = optim.sgd(0.1, momentum=0.9, weight_decay=5e-4, k=3, arithmetic=arithmetic)
    state = tx.init({"w": jnp.ones(3), "k": jnp.ones(2)})  # a parameter named k is no k
    for wrapped in (state, {"inner": (optax.EmptyState(), state)}):
        assert int(optim.perturbation_k(wrapped)) == 3
        assert isinstance(optim.perturbation_k(wrapped), jax.Array)
    with pytest.raises(ValueError, match="found 0"):
        optim.perturbation_k(optax.sgd(0.1).init(jnp.ones(3)))


def test_step_decay_multiplies_or_divides_in_double():
    """factor: MultiStepLR's lr * 0.1 per boundary; divisor: the authors' lr / 10. The
    doubles differ (0.1 * 0.1 = 0.010000000000000002); each is rounded once when used."""
    multiplied = optim.step_decay(0.1, [2, 4])
    divided = optim.step_decay(0.1, [2, 4], factor=None, divisor=10)
    assert multiplied.values == (0.1, 0.1 * 0.1, 0.1 * 0.1 * 0.1)
    assert multiplied.values == (0.1, 0.010000000000000002, 0.0010000000000000002)
    assert divided.values == (0.1, 0.1 / 10, 0.1 / 10 / 10) == (0.1, 0.01, 0.001)
    for schedule in (multiplied, divided):
        got = [schedule(jnp.int32(t)) for t in range(6)]
        expected = [schedule.values[i] for i in (0, 0, 1, 1, 2, 2)]
        assert [np.asarray(v).item() for v in got] == [
            np.asarray(v, np.asarray(got[0]).dtype).item() for v in expected
        ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"boundaries": [4, 2]}, "increasing"),
        ({"factor": 0.1, "divisor": 10}, "exactly one of factor"),
        ({"factor": None}, "exactly one of factor"),
    ],
)
def test_bad_step_decay_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.step_decay(0.1, **{"boundaries": [2, 4], **kwargs})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "positive integer, got 0"),
        ({"k": 1.5}, "got 1.5"),
        ({"k": 0, "arithmetic": "torch_cpu"}, "positive integer, got 0"),
        ({"nesterov": True}, "nesterov needs momentum"),
        ({"arithmetic": "cuda"}, "unknown arithmetic 'cuda'; allowed: as_written, torch_cpu"),
        (
            {"learning_rate": optax.constant_schedule(0.1), "arithmetic": "authors_cuda"},
            "float or optim.step_decay",
        ),
    ],
)
def test_bad_optimizer_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.sgd(**{"learning_rate": 0.1, **kwargs})


def test_torch_arithmetic_refuses_other_dtypes():
    tx = optim.sgd(0.1, arithmetic="torch_cpu")
    params = jnp.ones(3, jnp.bfloat16)
    with pytest.raises(ValueError, match="float32 tensors, got bfloat16"):
        tx.update(params, tx.init(params), params)


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


def test_linear_warmup_rises_to_the_schedule_then_follows_it():
    schedule = optim.linear_warmup(optim.step_decay(0.4, [10]), 4)
    lrs = [float(schedule(jnp.asarray(c, jnp.int32))) for c in (0, 1, 3, 4, 9, 10)]
    np.testing.assert_allclose(lrs, [0.1, 0.2, 0.4, 0.4, 0.4, 0.04], rtol=1e-6)
    # the torch arithmetics form lr * k on the host from the schedule's pieces: refused
    with pytest.raises(ValueError, match="give a float or optim.step_decay"):
        optim.sgd(schedule, arithmetic="torch_cpu")


def test_a_negative_warmup_is_refused():
    from eos_jax import recipe

    config = recipe.default_recipe()
    config.optimizer.warmup_steps = -1
    with pytest.raises(ValueError, match="config.optimizer.warmup_steps=-1 must be an integer"):
        recipe.validate(config)
