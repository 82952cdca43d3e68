"""Model zoo: parameter counts against hand counts, init distributions, names, dtypes, BN."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax.models import MODELS, create_model
from eos_jax.models.layers import (
    activation_fn,
    conv,
    drawn_flat,
    he_fan_out_normal,
    symmetric_uniform,
)
from eos_jax.models.resnet import CifarResNet

CIFAR = (2, 32, 32, 3)
DIGITS = (2, 8, 8, 1)
SMALL = (4, 8, 8, 3)  # parameter shapes do not depend on the image size of a ResNet
SIGNALS = (2, 40, 1)  # MNIST-1D


@pytest.fixture(scope="module")
def resnet20_variables():
    return create_model("resnet20").init(jax.random.key(0), jnp.zeros(SMALL), train=False)


def abstract_variables(model, shape):
    """Variable shapes and dtypes without computing anything."""
    x = jnp.zeros(shape, jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


# Independent hand counts from the architecture descriptions (docs/paper.md, section 2 etc.).
def conv_params(c_in, c_out, k, bias=False, dims=2):
    return k**dims * c_in * c_out + (c_out if bias else 0)


def bn_params(c):
    return 2 * c  # scale and bias; running stats are not parameters


def dense_params(n_in, n_out):
    return n_in * n_out + n_out


def resnet_hand_count(depth, num_classes=10, in_channels=3, dims=2, width=1, with_bn=True):
    """dims=1: the 1-D ResNets, kernels (k, C_in, C_out); without BN every conv has a bias."""
    conv_params_ = functools.partial(conv_params, dims=dims, bias=not with_bn)
    norm = bn_params if with_bn else (lambda c: 0)
    n = (depth - 2) // 6
    widths = [width * w for w in (16, 32, 64)]
    total = conv_params_(in_channels, widths[0], 3) + norm(widths[0])
    c_in = widths[0]
    for w in widths:
        for _ in range(n):
            total += conv_params_(c_in, w, 3) + conv_params_(w, w, 3) + 2 * norm(w)
            if c_in != w:  # projection shortcut
                total += conv_params_(c_in, w, 1) + norm(w)
            c_in = w
    return total + dense_params(widths[-1], num_classes)


def vgg_hand_count(groups, with_bn, num_classes=10, in_channels=3):
    total, c_in = 0, in_channels
    for width in (w for group in groups for w in group):
        total += conv_params(c_in, width, 3, bias=not with_bn) + (
            bn_params(width) if with_bn else 0
        )
        c_in = width
    return total + dense_params(512, num_classes)


VGG_A = ((64,), (128,), (256, 256), (512, 512), (512, 512))
VGG_D = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

# name: (input shape, pinned count, hand count)
PARAM_COUNTS = {
    "resnet20": (CIFAR, 272_474, resnet_hand_count(20)),
    "resnet32": (CIFAR, 466_906, resnet_hand_count(32)),
    "resnet44": (CIFAR, 661_338, resnet_hand_count(44)),
    "resnet56": (CIFAR, 855_770, resnet_hand_count(56)),
    "resnet110": (CIFAR, 1_730_714, resnet_hand_count(110)),
    # 1-D: (N, 40, 1) MNIST-1D signals, every 3x3 kernel a 3 (hence ~1/3 of the 2-D count).
    "resnet1d_8": (SIGNALS, 28_506, resnet_hand_count(8, in_channels=1, dims=1)),
    "resnet1d_14": (SIGNALS, 61_210, resnet_hand_count(14, in_channels=1, dims=1)),
    "resnet1d_20": (SIGNALS, 93_914, resnet_hand_count(20, in_channels=1, dims=1)),
    "resnet1d_32": (SIGNALS, 159_322, resnet_hand_count(32, in_channels=1, dims=1)),
    "resnet1d_44": (SIGNALS, 224_730, resnet_hand_count(44, in_channels=1, dims=1)),
    "resnet1d_56": (SIGNALS, 290_138, resnet_hand_count(56, in_channels=1, dims=1)),
    "resnet1d_110": (SIGNALS, 584_474, resnet_hand_count(110, in_channels=1, dims=1)),
    "vgg11": (CIFAR, 9_225_610, vgg_hand_count(VGG_A, with_bn=False)),
    "vgg11_bn": (CIFAR, 9_228_362, vgg_hand_count(VGG_A, with_bn=True)),
    "vgg16": (CIFAR, 14_719_818, vgg_hand_count(VGG_D, with_bn=False)),
    "vgg16_bn": (CIFAR, 14_724_042, vgg_hand_count(VGG_D, with_bn=True)),
    "small_cnn": (
        DIGITS,
        56_394,
        conv_params(1, 32, 3, True)
        + conv_params(32, 64, 3, True)
        + conv_params(64, 64, 3, True)
        + dense_params(64, 10),
    ),
    "mlp": (DIGITS, 55_210, dense_params(64, 200) + dense_params(200, 200) + dense_params(200, 10)),
    "one_layer_conv": ((2, 40, 40, 1), 1024, 32 * 32),
    # 1-D kernels (5, C_in, C_out) with bias; lengths 40 -> 40 -> 20 -> 10, flattened.
    "cnn1d": (
        (2, 40, 1),
        13_706,
        (5 * 1 * 32 + 32) + 2 * (5 * 32 * 32 + 32) + dense_params(32 * 10, 10),
    ),
}


def test_every_model_is_counted():
    assert set(PARAM_COUNTS) == set(MODELS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_matches_pin_and_hand_count(name):
    shape, pinned, by_hand = PARAM_COUNTS[name]
    assert pinned == by_hand
    assert count(abstract_variables(create_model(name), shape)["params"]) == pinned


def test_resnet_counts_are_option_a_plus_projections():
    # Option A (zero-padding shortcuts) counts published for these nets: 0.27M ... 1.7M.
    projections = conv_params(16, 32, 1) + bn_params(32) + conv_params(32, 64, 1) + bn_params(64)
    published = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}
    for depth, millions in published.items():
        option_a = PARAM_COUNTS[f"resnet{depth}"][1] - projections
        assert round(option_a, -4 if depth < 110 else -5) == millions


@pytest.mark.parametrize(
    "options, pinned", [({"width": 2}, 371_114), ({"use_batch_norm": False}, 93_130)]
)
def test_resnet_width_and_batch_norm_options_match_hand_counts(options, pinned):
    model = create_model("resnet1d_20", **options)
    variables = abstract_variables(model, SIGNALS)
    assert pinned == resnet_hand_count(20, in_channels=1, dims=1, **options_as_counted(options))
    assert count(variables["params"]) == pinned
    assert ("batch_stats" in variables) == options.get("use_batch_norm", True)


def options_as_counted(options):
    return {"width": options.get("width", 1), "with_bn": options.get("use_batch_norm", True)}


def test_resnet_width_must_be_a_positive_integer():
    with pytest.raises(ValueError, match=r"ResNet width must be an integer >= 1, got 0"):
        abstract_variables(create_model("resnet1d_20", width=0), SIGNALS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_output_shape(name):
    shape = PARAM_COUNTS[name][0]
    model = create_model(name, num_classes=7)
    x = jnp.zeros(shape)
    variables = abstract_variables(model, shape)
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert logits.shape == ((2,) if name == "one_layer_conv" else (2, 7))


def test_unknown_name_is_a_one_line_error_listing_known_names():
    with pytest.raises(ValueError, match=r"unknown model 'foo'; known: resnet20, resnet32") as err:
        create_model("foo")
    assert "\n" not in str(err.value)


def test_unknown_option_names_model_and_option():
    with pytest.raises(ValueError, match=r"model 'resnet20' has no option\(s\) widths"):
        create_model("resnet20", widths=(8,))
    with pytest.raises(ValueError, match="depth"):
        create_model("resnet20", depth=32)  # fixed by the name


def test_stage2_block6_conv1_path_in_resnet56():
    params = abstract_variables(create_model("resnet56"), CIFAR)["params"]
    assert params["stage2_block6"]["conv1"]["kernel"].shape == (3, 3, 32, 32)
    assert params["stage2_block1"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 32)
    assert "shortcut_conv" not in params["stage2_block2"]
    assert params["head"]["kernel"].shape == (64, 10)


def test_conv_init_is_untruncated_he_fan_out_normal(resnet20_variables):
    params = resnet20_variables["params"]
    kernels = [params[f"stage3_block{b}"][c]["kernel"] for b in (2, 3) for c in ("conv1", "conv2")]
    w = np.concatenate([np.asarray(k).ravel() for k in kernels])
    n, std = w.size, math.sqrt(2 / (3 * 3 * 64))
    # Standard errors for n = 147,456 normal samples; 5 SE leaves ~1e-6 false alarms.
    assert abs(w.mean()) < 5 * std / math.sqrt(n)
    assert abs(w.std() / std - 1) < 5 / math.sqrt(2 * n)
    # P(|z| > 2.5) = 1.24% for a normal; a truncated normal (|z| <= 2.27) has none.
    tail, p = np.mean(np.abs(w) > 2.5 * std), 0.012419
    assert abs(tail - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_flat_drawn_inits_have_the_bits_of_jax_s_shaped_draws():
    """The zoo draws each kernel flat and reshapes it (layers.drawn_flat, for compile time):
    with threefry keys every element keeps its bits, whatever the rank and dtype."""
    reference_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    shapes = [(2, 1, 1, 3), (5,)]  # a kernel and a bias (no fan-out: no normal draw)
    dtypes = [jnp.float32, jnp.float64, jnp.bfloat16]

    def draws(normal, uniform, key):
        keys = iter(jax.random.split(key, 2 * len(shapes) * len(dtypes)))
        return [
            (normal(next(keys), s, d) if len(s) > 1 else None, uniform(next(keys), s, d))
            for s in shapes
            for d in dtypes
        ]

    with jax.enable_x64(True):
        ours = jax.jit(functools.partial(draws, he_fan_out_normal, symmetric_uniform(0.3)))
        theirs = functools.partial(jax.random.uniform, minval=-0.3, maxval=0.3)
        jaxs = jax.jit(functools.partial(draws, reference_normal, theirs))
        key = jax.random.key(11)
        a, b = jax.tree.leaves(ours(key)), jax.tree.leaves(jaxs(key))
    assert len(a) == len(b) == 3 * len(dtypes)
    assert [x.dtype for x in a] == [x.dtype for x in b]
    for x, y in zip(a, b, strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.mark.slow  # ~10 s of compiling; the draws themselves: the test above
def test_a_resnet_initialised_by_flax_s_own_initializers_has_the_zoo_s_bits():
    from benchmarks import init_compile

    (_, flat), (_, shaped) = (init_compile.compile_init("resnet1d_8", s) for s in (False, True))
    assert flat == shaped


def test_dense_init_is_pytorch_uniform():
    params = create_model("mlp").init(jax.random.key(0), jnp.zeros(DIGITS), train=False)["params"]
    for layer, fan_in in (("hidden1", 64), ("hidden2", 200)):
        bound = 1 / math.sqrt(fan_in)
        for w in (np.asarray(params[layer]["kernel"]), np.asarray(params[layer]["bias"])):
            assert np.all(np.abs(w) <= bound)
        w = np.asarray(params[layer]["kernel"]).ravel()
        n = w.size
        # mean(w^2) = bound^2/3 with SE sqrt(4/45) bound^2 / sqrt(n); uniform: P(|w| < b/2) = 1/2.
        assert abs(np.mean(w**2) - bound**2 / 3) < 5 * math.sqrt(4 / 45) * bound**2 / math.sqrt(n)
        assert abs(np.mean(np.abs(w) < bound / 2) - 0.5) < 5 * 0.5 / math.sqrt(n)


def test_bn_init_and_conv_biases(resnet20_variables):
    for block in ("stem_bn", "stage3_block3"):
        bn = resnet20_variables["params"][block]
        stats = resnet20_variables["batch_stats"][block]
        if block != "stem_bn":
            bn, stats = bn["bn2"], stats["bn2"]
        np.testing.assert_array_equal(bn["scale"], 1)
        np.testing.assert_array_equal(bn["bias"], 0)
        np.testing.assert_array_equal(stats["mean"], 0)
        np.testing.assert_array_equal(stats["var"], 1)
    assert "bias" not in resnet20_variables["params"]["stem_conv"]
    assert (
        "bias" not in abstract_variables(create_model("vgg11_bn"), CIFAR)["params"]["group1_conv1"]
    )
    assert "bias" in abstract_variables(create_model("vgg11"), CIFAR)["params"]["group1_conv1"]


@pytest.mark.parametrize("kernel_size", [3, 1])
def test_stride2_conv_pads_like_pytorch(kernel_size):
    # PyTorch pads k // 2 on every side; Flax's 'SAME' would pad 3x3 stride 2 by (0, 1).
    layer = conv(4, kernel_size, strides=2, dtype=jnp.float32, param_dtype=jnp.float32, name="c")
    x = drawn_flat(jax.random.key(1), (1, 8, 8, 2), float, jax.random.normal)
    variables = layer.init(jax.random.key(0), x)
    pad = kernel_size // 2
    expected = jax.lax.conv_general_dilated(
        jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))),
        variables["params"]["kernel"],
        window_strides=(2, 2),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-6, atol=1e-6)


def test_batch_stats_update_in_train_mode_only(resnet20_variables):
    model = create_model("resnet20")
    x = drawn_flat(jax.random.key(1), SMALL, float, jax.random.normal)
    _, trained = model.apply(resnet20_variables, x, train=True, mutable=["batch_stats"])
    _, evaluated = model.apply(resnet20_variables, x, train=False, mutable=["batch_stats"])
    before = jax.tree.leaves(resnet20_variables["batch_stats"])
    after_train, after_eval = jax.tree.leaves(trained), jax.tree.leaves(evaluated)
    assert len(before) == len(after_train) == len(after_eval) == 2 * 21  # 19 convs + 2 projections
    assert not any(np.array_equal(a, b) for a, b in zip(before, after_train, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(before, after_eval, strict=True))


def test_swish_variant(resnet20_variables):
    s = activation_fn("swish", swish_beta=5.0)
    z = jnp.linspace(-2, 2, 9)
    np.testing.assert_allclose(s(z), z / (1 + jnp.exp(-5 * z)), rtol=1e-6)
    relu, swish = create_model("resnet20"), create_model("resnet20", activation="swish")
    assert swish.swish_beta == 5.0
    x = drawn_flat(jax.random.key(1), SMALL, float, jax.random.normal)
    out_relu = relu.apply(resnet20_variables, x, train=False)
    out_swish = swish.apply(resnet20_variables, x, train=False)
    assert not np.allclose(out_relu, out_swish)
    with pytest.raises(ValueError, match="unknown activation 'sigmoid'"):
        abstract_variables(create_model("resnet20", activation="sigmoid"), CIFAR)


@pytest.mark.parametrize(
    "name",
    sorted(set(MODELS) - {f"resnet{p}{d}" for p in ("", "1d_") for d in (32, 44, 56, 110)}),
)
def test_dtypes_are_honoured(name):
    shape = PARAM_COUNTS[name][0]
    model = create_model(name, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    variables = abstract_variables(model, shape)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("bfloat16")}
    mixed = create_model(name, dtype=jnp.bfloat16)
    variables = abstract_variables(mixed, shape)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
    logits = jax.eval_shape(lambda v: mixed.apply(v, jnp.zeros(shape), train=False), variables)
    assert logits.dtype == jnp.bfloat16


def test_resnet_rejects_bad_depth():
    model = CifarResNet(depth=21)
    with pytest.raises(ValueError, match="6n\\+2"):
        abstract_variables(model, CIFAR)


def test_small_cnn_runs_on_cifar_shapes_and_has_no_batch_stats():
    variables = abstract_variables(create_model("small_cnn", widths=(8, 16)), CIFAR)
    assert set(variables) == {"params"}
    assert variables["params"]["conv2"]["kernel"].shape == (3, 3, 8, 16)


def test_models_are_flax_modules():
    assert all(isinstance(create_model(name), nn.Module) for name in MODELS)


def test_gelu_is_the_exact_x_times_normal_cdf():
    import scipy.stats

    x = np.linspace(-4.0, 4.0, 41)
    expected = x * scipy.stats.norm.cdf(x)
    np.testing.assert_allclose(
        np.asarray(activation_fn("gelu")(jnp.asarray(x))), expected, atol=1e-6
    )
    model = create_model("cnn1d", num_classes=10, widths=(4,), activation="gelu")
    assert model.activation == "gelu"
