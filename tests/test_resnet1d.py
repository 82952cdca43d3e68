"""The 1-D ResNets (resnet1d_*): counts, init, and forward + gradients against two
independent implementations (plain jnp here; PyTorch's functional conv1d / batch_norm where
torch is installed), in train mode (batch statistics, running-stat update) and eval mode."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax.models import create_model

SIGNALS = (6, 40, 1)  # MNIST-1D: (N, L, C)
DEPTH = 8
WIDTHS = (16, 32, 64)


def closed_form_count(depth: int, in_channels: int = 1, num_classes: int = 10) -> int:
    """Parameters of a 1-D ResNet-(6n+2), summed by hand (kernels k * C_in * C_out, BN 2C):
    stem 3*C_in*16 + 32; a 16-wide block 2*768 + 64 = 1600; the first 32-wide block
    1536 + 3072 + 128 + 512 + 64 = 5312, the others 2*3072 + 128 = 6272; the first 64-wide
    6144 + 12288 + 256 + 2048 + 128 = 20864, the others 2*12288 + 256 = 24832; head 64*10 + 10.
    """
    n = (depth - 2) // 6
    stem = 3 * in_channels * 16 + 32
    stages = 1600 * n + 5312 + 6272 * (n - 1) + 20864 + 24832 * (n - 1)
    return stem + stages + 64 * num_classes + num_classes


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_parameter_counts_match_a_closed_form(depth):
    model = create_model(f"resnet1d_{depth}")
    x = jnp.zeros(SIGNALS)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert sum(leaf.size for leaf in jax.tree.leaves(variables["params"])) == closed_form_count(
        depth
    )
    assert closed_form_count(20) == 93_914 and closed_form_count(56) == 290_138
    params = variables["params"]
    assert params["stem_conv"]["kernel"].shape == (3, 1, 16)
    assert params["stage2_block1"]["shortcut_conv"]["kernel"].shape == (1, 16, 32)
    assert "shortcut_conv" not in params["stage1_block1"]
    assert "shortcut_conv" not in params["stage3_block2"]
    assert params["stage3_block2"]["conv1"]["kernel"].shape == (3, 64, 64)


def test_init_is_he_fan_out_normal_and_pytorch_uniform_dense():
    with jax.enable_x64(True):
        variables = float64_setup("relu")[1]  # as initialised, before the BN perturbation
    params = variables["params"]
    kernels = [params["stage3_block1"][c]["kernel"] for c in ("conv1", "conv2")]
    w = np.concatenate([np.asarray(k).ravel() for k in kernels])
    n, std = w.size, math.sqrt(2 / (3 * 64))  # fan-out k * C_out
    assert abs(w.mean()) < 5 * std / math.sqrt(n)
    assert abs(w.std() / std - 1) < 5 / math.sqrt(2 * n)
    head = np.asarray(params["head"]["kernel"])
    assert np.abs(head).max() <= 1 / math.sqrt(64) and np.abs(head).max() > 0.9 / math.sqrt(64)
    assert "bias" not in params["stem_conv"]
    np.testing.assert_array_equal(params["stage1_block1"]["bn1"]["scale"], 1)
    np.testing.assert_array_equal(variables["batch_stats"]["stem_bn"]["var"], 1)


def test_rank_is_checked_both_ways():
    signals, images = jnp.zeros(SIGNALS), jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"\(N, L, C\) signals, got shape \(2, 8, 8, 1\)"):
        create_model("resnet1d_20").init(jax.random.key(0), images, train=False)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\) images, got shape \(6, 40, 1\)"):
        create_model("resnet20").init(jax.random.key(0), signals, train=False)
    with pytest.raises(ValueError, match="spatial_dims"):
        create_model("resnet1d_20", spatial_dims=2)  # fixed by the name


# ------------------------------------------------------------ an independent implementation


def reference_conv(x, w, stride):
    """PyTorch's Conv1d(padding=k // 2, bias=False) as a sum over taps; w: (k, C_in, C_out)."""
    k = w.shape[0]
    pad = k // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    length = (x.shape[1] + 2 * pad - k) // stride + 1
    taps = [padded[:, t : t + stride * (length - 1) + 1 : stride] for t in range(k)]
    return sum(jnp.einsum("nlc,co->nlo", tap, w[t]) for t, tap in enumerate(taps))


def reference_resnet(params, stats, x, *, train, depth, activation):
    """Logits and updated running statistics, written out from the paper's description."""
    act = jax.nn.relu if activation == "relu" else (lambda z: z * jax.nn.sigmoid(5.0 * z))
    new_stats = {}

    def bn(z, *path):
        p, s = params, stats
        for key in path:
            p, s = p[key], s[key]
        if train:
            mean, var = z.mean((0, 1)), z.var((0, 1))  # biased, as PyTorch normalises
            m = z.shape[0] * z.shape[1]
            node = new_stats
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = {
                "mean": 0.9 * s["mean"] + 0.1 * mean,
                "var": 0.9 * s["var"] + 0.1 * var * m / (m - 1),
            }
        else:
            mean, var = s["mean"], s["var"]
        return (z - mean) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]

    z = act(bn(reference_conv(x, params["stem_conv"]["kernel"], 1), "stem_bn"))
    n = (depth - 2) // 6
    for stage, width in enumerate(WIDTHS, start=1):
        for block in range(1, n + 1):
            name = f"stage{stage}_block{block}"
            p = params[name]
            stride = 2 if stage > 1 and block == 1 else 1
            y = act(bn(reference_conv(z, p["conv1"]["kernel"], stride), name, "bn1"))
            y = bn(reference_conv(y, p["conv2"]["kernel"], 1), name, "bn2")
            if z.shape[-1] != width:
                z = bn(reference_conv(z, p["shortcut_conv"]["kernel"], stride), name, "shortcut_bn")
            z = act(y + z)
    pooled = z.mean(axis=1)
    logits = pooled @ params["head"]["kernel"] + params["head"]["bias"]
    return logits, new_stats


@functools.cache
def float64_setup(activation):
    """A resnet1d_8 in float64 (every kind of block: stage 1's keeps its width and stride,
    the first block of stages 2 and 3 halves the length through a 1x1 shortcut; deeper nets
    repeat stage 1's kind); its variables as initialised and with random BN affine
    parameters and running statistics (so that eval mode is not the identity); a batch and a
    cotangent for the logits. Call inside jax.enable_x64(True)."""
    model = create_model(
        f"resnet1d_{DEPTH}", activation=activation, dtype=jnp.float64, param_dtype=jnp.float64
    )
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=SIGNALS))
    init = jax.jit(model.init, static_argnames="train")  # one compile, not one per op
    variables = init(jax.random.key(0), x, train=False)

    def perturb(path, leaf):
        name = jax.tree_util.keystr(path)
        if "bn" in name and "scale" in name or "'var'" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape))
        if "bn" in name and "bias" in name or "'mean'" in name:
            return jnp.asarray(rng.normal(scale=0.3, size=leaf.shape))
        return leaf

    perturbed = jax.tree_util.tree_map_with_path(perturb, variables)
    cotangent = jnp.asarray(rng.normal(size=(SIGNALS[0], 10)))
    return model, variables, perturbed, x, cotangent


def ours(model, variables, x, cotangent, train):
    """Logits, new batch stats, gradients w.r.t. (params, x) of <logits, cotangent>."""

    def scalar(params, x):
        vs = {"params": params, "batch_stats": variables["batch_stats"]}
        logits, updates = model.apply(vs, x, train=train, mutable=["batch_stats"])
        return jnp.vdot(logits, cotangent), (logits, updates["batch_stats"])

    grads, (logits, stats) = jax.grad(scalar, argnums=(0, 1), has_aux=True)(variables["params"], x)
    return logits, stats, grads


def assert_trees_close(actual, expected, rtol=1e-9):
    flat_a, tree_a = jax.tree.flatten(actual)
    flat_e, tree_e = jax.tree.flatten(expected)
    assert tree_a == tree_e
    for a, e in zip(flat_a, flat_e, strict=True):
        e = np.asarray(e)
        np.testing.assert_allclose(np.asarray(a), e, rtol=0, atol=rtol * max(np.abs(e).max(), 1))


@pytest.mark.parametrize("activation", ["relu", "swish"])
def test_forward_and_gradients_match_a_plain_jnp_resnet(activation):
    with jax.enable_x64(True):
        model, _, variables, x, cotangent = float64_setup(activation)
        for train in (True, False):
            logits, stats, grads = ours(model, variables, x, cotangent, train)

            def scalar(params, x, train=train):
                logits, new = reference_resnet(
                    params, variables["batch_stats"], x, train=train, depth=DEPTH,
                    activation=activation,
                )  # fmt: skip
                return jnp.vdot(logits, cotangent), (logits, new)

            expected_grads, (expected_logits, expected_stats) = jax.grad(
                scalar, argnums=(0, 1), has_aux=True
            )(variables["params"], x)
            assert_trees_close(logits, expected_logits)
            assert_trees_close(grads, expected_grads)
            if train:
                assert_trees_close(stats, expected_stats)
            else:  # eval mode leaves the running statistics as they were
                assert_trees_close(stats, variables["batch_stats"], rtol=0)
            assert np.abs(np.asarray(logits)).max() > 0.1  # not a degenerate comparison


def test_forward_and_gradients_match_pytorch():
    """PyTorch's own conv1d and batch_norm (BatchNorm1d semantics on (N, C, L)), float64."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    with jax.enable_x64(True):
        model, _, variables, x, cotangent = float64_setup("relu")
        params = jax.tree.map(np.asarray, variables["params"])
        for train in (True, False):
            logits, stats, grads = ours(model, variables, x, cotangent, train)
            weights = jax.tree.map(lambda a: torch.tensor(a, requires_grad=True), params)
            running = jax.tree.map(lambda a: torch.tensor(np.array(a)), variables["batch_stats"])
            inputs = torch.tensor(np.asarray(x), requires_grad=True)

            def conv(z, kernel, stride):  # flax (k, C_in, C_out) -> torch (C_out, C_in, k)
                k = kernel.shape[0]
                return functional.conv1d(z, kernel.permute(2, 1, 0), stride=stride, padding=k // 2)

            def bn(z, p, s, train=train):
                return functional.batch_norm(
                    z, s["mean"], s["var"], p["scale"], p["bias"], training=train,
                    momentum=0.1, eps=1e-5,
                )  # fmt: skip

            z = inputs.permute(0, 2, 1)  # (N, C, L)
            z = functional.relu(
                bn(
                    conv(z, weights["stem_conv"]["kernel"], 1),
                    weights["stem_bn"],
                    running["stem_bn"],
                )
            )
            for stage, width in enumerate(WIDTHS, start=1):
                for block in range(1, (DEPTH - 2) // 6 + 1):
                    name = f"stage{stage}_block{block}"
                    p, s = weights[name], running[name]
                    stride = 2 if stage > 1 and block == 1 else 1
                    y = functional.relu(
                        bn(conv(z, p["conv1"]["kernel"], stride), p["bn1"], s["bn1"])
                    )
                    y = bn(conv(y, p["conv2"]["kernel"], 1), p["bn2"], s["bn2"])
                    if z.shape[1] != width:
                        shortcut = conv(z, p["shortcut_conv"]["kernel"], stride)
                        z = bn(shortcut, p["shortcut_bn"], s["shortcut_bn"])
                    z = functional.relu(y + z)
            torch_logits = functional.linear(
                z.mean(dim=2), weights["head"]["kernel"].T, weights["head"]["bias"]
            )
            (torch_logits * torch.tensor(np.asarray(cotangent))).sum().backward()
            assert_trees_close(logits, torch_logits.detach().numpy())
            torch_grads = (jax.tree.map(lambda t: t.grad.numpy(), weights), inputs.grad.numpy())
            assert_trees_close(grads, torch_grads)
            # train mode updated `running` in place (unbiased variance); eval mode did not
            assert_trees_close(stats, jax.tree.map(lambda t: t.numpy(), running))


def test_the_paper_fidelity_mnist1d_recipe_builds_as_documented():
    from eos_jax.training import build
    from eos_jax.training.ensemble import Ensemble
    from eos_jax.training.sources import Member
    from experiments.configs import mnist1d_resnet

    config = mnist1d_resnet.get_config()
    ensemble = Ensemble([Member("recipe", config)], build.dataset(config), "unrolled")
    assert ensemble.steps_per_epoch == mnist1d_resnet.STEPS_PER_EPOCH == 63  # last batch kept
    assert ensemble.models[0].spatial_dims == 1 and ensemble.models[0].depth == 20
    assert ensemble.streams[0].augment and ensemble.streams[0].crop_padding == 4
