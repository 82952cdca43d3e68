"""PyTorchBatchNorm: Flax's train-mode bits, PyTorch's running statistics, stable dtypes."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eos_jax.models import create_model
from eos_jax.models.layers import batch_norm, drawn_flat

SHAPE = (8, 4, 4, 3)  # m = 8 * 4 * 4 = 128 values per channel
M = SHAPE[0] * SHAPE[1] * SHAPE[2]


def sample(shape=SHAPE, dtype=jnp.float32, seed=1):
    return (drawn_flat(jax.random.key(seed), shape, float, jax.random.normal) * 3 + 1).astype(dtype)


def flax_batch_norm(dtype, param_dtype):
    """The layer this project used before: Flax's own BatchNorm with PyTorch's constants."""
    return nn.BatchNorm(
        use_running_average=False,
        momentum=0.9,
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
    )


@pytest.mark.parametrize(
    "dtype, param_dtype",
    [
        ("float32", "float32"),
        ("bfloat16", "float32"),
        ("bfloat16", "bfloat16"),
        ("float64", "float64"),
    ],
)
def test_train_mode_keeps_the_bits_of_flax_batchnorm(dtype, param_dtype):
    """Outputs and gradients (input and parameters) are bit-identical under jit."""
    with jax.enable_x64(dtype == "float64"):
        check_train_mode_bits(dtype, param_dtype)


def check_train_mode_bits(dtype, param_dtype):
    ours = batch_norm(True, dtype=dtype, param_dtype=param_dtype, name="bn")
    theirs = flax_batch_norm(dtype, param_dtype)
    x = sample(dtype=dtype)
    keys = jax.random.split(jax.random.key(2), 2)
    params = {
        "scale": jax.random.uniform(keys[0], (3,), param_dtype, 0.5, 1.5),
        "bias": jax.random.normal(keys[1], (3,), param_dtype),
    }
    cotangent = drawn_flat(jax.random.key(3), SHAPE, dtype, jax.random.normal)

    @functools.partial(jax.jit, static_argnums=0)
    def forward_backward(module, params, x):
        stats = module.init(jax.random.key(0), x)["batch_stats"]

        def f(params, x):
            return module.apply({"params": params, "batch_stats": stats}, x, mutable=True)

        y, vjp, updates = jax.vjp(f, params, x, has_aux=True)
        return y, updates["batch_stats"]["mean"], vjp(cotangent)

    y_ours, mean_ours, grads_ours = forward_backward(ours, params, x)
    y_theirs, mean_theirs, grads_theirs = forward_backward(theirs, params, x)
    assert y_ours.dtype == y_theirs.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(y_ours, y_theirs)
    for a, b in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads_theirs), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # Flax's 1 - 0.9 and our 0.1 are one float64 ulp apart (in float32 they round alike), so
    # the running means may differ by an ulp or two of float64.
    np.testing.assert_allclose(mean_ours, mean_theirs, rtol=4 * np.finfo(mean_ours.dtype).eps)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_update_gives_pytorch_running_stats(dtype):
    """running = 0.9 * init + 0.1 * batch stat, var unbiased (NumPy's ddof=1) in float64.

    The layer sums m = 128 nonnegative squares, so its variance is within (m - 1) * eps/2
    relative (recursive summation bound); rtol = m * eps. Keeping the biased variance instead
    would be off by 0.1 * var / (m - 1) ~ 4e-3 relative here.
    """
    with jax.enable_x64(dtype == "float64"):
        x = sample(dtype=dtype)
        layer = batch_norm(True, dtype=dtype, param_dtype=dtype, name="bn")
        y, updates = layer.apply(layer.init(jax.random.key(0), x), x, mutable=["batch_stats"])
        stats = updates["batch_stats"]
        assert stats["mean"].dtype == stats["var"].dtype == jnp.dtype(dtype)
        x64 = np.asarray(x, np.float64).reshape(-1, SHAPE[-1])
        mean, var = x64.mean(axis=0), x64.var(axis=0, ddof=1)
        rtol = M * np.finfo(dtype).eps
        np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=rtol)
        np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=rtol)
        # Normalisation itself uses the biased variance, as PyTorch's does.
        biased = x64.var(axis=0)
        expected = (x64 - mean) / np.sqrt(biased + 1e-5)
        np.testing.assert_allclose(np.reshape(y, (-1, SHAPE[-1])), expected, atol=rtol)


def test_training_with_one_value_per_channel_is_an_error():
    x = sample(shape=(1, 1, 1, 3))
    layer = batch_norm(True, dtype=jnp.float32, param_dtype=jnp.float32, name="bn")
    variables = layer.init(jax.random.key(0), x)  # init does not update: allowed
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer.apply(variables, x, mutable=["batch_stats"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_torch_batchnorm2d_in_train_and_eval_mode(dtype):
    """Three train-mode batches, then eval mode on a fourth, against torch.nn.BatchNorm2d.

    Both compute the same formulas; they differ in rounding only: PyTorch's CPU kernel
    accumulates the statistics in double and evaluates y = x * a + b with folded constants,
    ours sums in the working dtype (m = 128 terms) and normalises step by step. That is a
    few ulps of max|y| (4 eps measured in float32 and in float64); we allow 32 eps * max|y|.
    Keeping Flax's biased running variance would be off by ~1e-2 absolute in eval mode.
    """
    torch = pytest.importorskip("torch")
    with jax.enable_x64(dtype == "float64"):
        rng = np.random.default_rng(0)
        channels = SHAPE[-1]
        scale = rng.uniform(0.5, 1.5, channels).astype(dtype)
        bias = rng.normal(size=channels).astype(dtype)
        batches = [(rng.normal(size=SHAPE) * 3 + 1).astype(dtype) for _ in range(4)]
        reference = torch.nn.BatchNorm2d(channels, dtype=getattr(torch, dtype))
        with torch.no_grad():
            reference.weight.copy_(torch.from_numpy(scale))
            reference.bias.copy_(torch.from_numpy(bias))

        def torch_apply(x):
            nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
            return reference(nchw).permute(0, 2, 3, 1).detach().numpy()

        def assert_close(ours, theirs):
            atol = 32 * np.finfo(dtype).eps * np.abs(theirs).max()
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol)

        train = batch_norm(True, dtype=dtype, param_dtype=dtype, name="bn")
        stats = train.init(jax.random.key(0), batches[0])["batch_stats"]
        params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
        reference.train()
        for x in batches[:3]:
            y, updates = train.apply(
                {"params": params, "batch_stats": stats}, x, mutable=["batch_stats"]
            )
            stats = updates["batch_stats"]
            assert_close(y, torch_apply(x))
        assert_close(stats["mean"], reference.running_mean.numpy())
        assert_close(stats["var"], reference.running_var.numpy())
        evaluate = batch_norm(False, dtype=dtype, param_dtype=dtype, name="bn")
        reference.eval()
        y = evaluate.apply({"params": params, "batch_stats": stats}, batches[3])
        assert_close(y, torch_apply(batches[3]))


POLICIES = [  # (param dtype, compute dtype)
    ("float32", "float32"),
    ("float32", "bfloat16"),
    ("bfloat16", "bfloat16"),
    ("float64", "float64"),
]


@pytest.mark.parametrize("name", ["resnet20", "vgg11_bn"])
@pytest.mark.parametrize("param_dtype, dtype", POLICIES)
def test_state_dtypes_are_fixed_from_initialisation(name, param_dtype, dtype):
    """batch_stats start in the param dtype (at least float32) and a train step keeps every
    state leaf's dtype, so a step compiles once and a checkpoint restores into its template.
    Abstract evaluation only: nothing is computed."""
    with jax.enable_x64(param_dtype == "float64"):
        model = create_model(name, dtype=dtype, param_dtype=param_dtype)
        tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
        x = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
        labels = jax.ShapeDtypeStruct((4,), jnp.int32)

        def init(x):
            variables = model.init(jax.random.key(0), x, train=False)
            return variables["params"], variables["batch_stats"], tx.init(variables["params"])

        def step(state, x, labels):
            params, batch_stats, opt_state = state

            def loss(params):
                logits, updates = model.apply(
                    {"params": params, "batch_stats": batch_stats},
                    x,
                    train=True,
                    mutable=["batch_stats"],
                )
                xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
                return xent.mean(), updates["batch_stats"]

            grads, new_stats = jax.grad(loss, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_stats, opt_state

        before = jax.eval_shape(init, x)
        after = jax.eval_shape(step, before, x, labels)
        stats_dtype = jnp.promote_types(param_dtype, jnp.float32)
        assert {leaf.dtype for leaf in jax.tree.leaves(before[1])} == {stats_dtype}
        assert jax.tree.map(lambda a: a.dtype, after) == jax.tree.map(lambda a: a.dtype, before)


def test_fp64_bn_model_resumes_bit_exactly(tmp_path):
    """Stop and resume a float64 model with BatchNorm: the checkpoint restores into the
    initial state's template, which holds float64 batch_stats from the start. The MLP with
    BatchNorm (the layer the ResNets use, whose float64 state dtypes the test above checks)
    keeps the compile small; a float64 ResNet-20 took ~30 s of CPU here."""
    from eos_jax import recipe
    from eos_jax.training import trainer

    config = recipe.default_recipe()
    config.model = "mlp"
    config.model_kwargs = {"hidden": (32, 32), "use_batch_norm": True}
    config.update_from_flattened_dict(
        {
            "num_steps": 4,
            "batch_size": 16,
            "eval_every_steps": 4,
            "checkpoint_every_steps": 2,
            "quiet": True,
            "numerics.param_dtype": "fp64",
            "numerics.compute_dtype": "fp64",
        }
    )
    with jax.enable_x64(True):
        whole = trainer.train_and_evaluate(config, str(tmp_path / "whole"))
        trainer.train_and_evaluate(config, str(tmp_path / "split"), stop_at_step=2)
        resumed = trainer.train_and_evaluate(config, str(tmp_path / "split"))
    assert resumed.resumed_from_step == 2
    assert resumed.members == whole.members
