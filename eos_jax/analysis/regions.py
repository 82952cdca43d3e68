"""The paper's activation regions in deep nets: the Regions observer.

Section 4 linearises training differently where a unit's input z is activated (z > t),
transitioning (|z| <= t) or not activated (z < -t). This observer measures, every
`every_steps` steps (and at steps 0 and the last), for each member and each hidden layer,
the fraction of pre-activations (the inputs of the layer's activation function) in each
band over the first `size` training examples (unaugmented). Records (kind 'regions'):
`activated`, `transitioning`, `not_activated` (each {layer: fraction}), `threshold`, `size`.

The default t is the one-layer theory's REGION_THRESHOLD = 3 (beta z with beta = 1: there
sigmoid is within 5% of 0 or 1, so swish is ~z or ~0). For tanh the outer bands are its
saturated ends (tanh'(3) ~ 0.01), for ReLU the sign bands with a margin of t.

The pre-activations are read with Flax's `capture_intermediates`: they are the outputs of
the layers named in PREACTIVATION_LAYERS (mlp: hidden{i} dense layers; small_cnn and cnn1d:
conv{i}), so no model carries code for this. Models whose activations take other inputs
(the ResNets' and VGGs' take batch-norm outputs and residual sums) are refused.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from eos_jax.analysis.curvature import train_chunks
from eos_jax.analysis.one_layer.regions import REGION_THRESHOLD, REGIONS
from eos_jax.models import CNN1D, MLP, SmallCNN
from eos_jax.training.observers import Observer, read_series

# model class -> the names of the layers whose outputs are the activation functions' inputs
PREACTIVATION_LAYERS = {MLP: r"hidden\d+", SmallCNN: r"conv\d+", CNN1D: r"conv\d+"}


def preactivation_pattern(model) -> str:
    """The regex of `model`'s pre-activation layer names; ValueError for other models."""
    pattern = PREACTIVATION_LAYERS.get(type(model))
    if pattern is None:
        known = ", ".join(c.__name__ for c in PREACTIVATION_LAYERS)
        raise ValueError(f"regions: model {type(model).__name__} is not supported; known: {known}")
    return pattern


@functools.cache
def _chunk_counts(model, threshold: float):
    """(params, images) -> {layer: (activated, transitioning, not activated) counts}, jitted
    once per model and threshold (the supported models have no batch statistics)."""
    pattern = re.compile(preactivation_pattern(model))

    def captured(module, method_name: str) -> bool:
        return method_name == "__call__" and bool(module.name and pattern.fullmatch(module.name))

    def fn(params, images):
        _, state = model.apply(
            {"params": params},
            images,
            train=True,
            capture_intermediates=captured,
            mutable=["intermediates"],
        )
        out = {}
        for name, calls in state["intermediates"].items():
            z = calls["__call__"][0]
            out[name] = jnp.stack(
                [jnp.sum(z > threshold), jnp.sum(jnp.abs(z) <= threshold), jnp.sum(z < -threshold)]
            )
        return out

    return jax.jit(fn)


def region_fractions(model, params, batches, threshold: float = REGION_THRESHOLD) -> dict:
    """{region: {layer: fraction of that layer's pre-activations over `batches`}}."""
    totals: dict[str, np.ndarray] = {}
    for b in batches:
        for name, counts in _chunk_counts(model, float(threshold))(params, b["image"]).items():
            totals[name] = totals.get(name, 0) + np.asarray(counts, np.int64)
    return {
        region: {name: float(c[j] / c.sum()) for name, c in totals.items()}
        for j, region in enumerate(REGIONS)
    }


class Regions(Observer):
    """Per-layer fractions of pre-activations in each region (see the module docstring).

    size: the first `size` training examples (None: all); chunk_size: examples per forward
    pass; threshold: t of the bands, > 0.
    """

    at_start = True
    kind = "regions"

    def __init__(
        self,
        every_steps: int,
        size: int | None = 512,
        chunk_size: int = 512,
        threshold: float = REGION_THRESHOLD,
    ):
        self.every_steps, self.size, self.chunk_size = every_steps, size, chunk_size
        self.threshold = threshold

    def setup(self, ensemble, num_steps: int) -> None:
        """ValueError for bad settings or an unsupported model; builds the fixed subset."""
        self.check_every_steps("regions")
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"regions threshold={self.threshold!r} must be a finite number > 0")
        pattern = re.compile(preactivation_pattern(ensemble.models[0]))
        layers = {
            path[0].key
            for path, _ in jax.tree_util.tree_flatten_with_path(ensemble.param_shapes())[0]
        }
        if not any(pattern.fullmatch(layer) for layer in layers):
            raise ValueError(
                f"regions: the model has no hidden layer to measure (layers: "
                f"{', '.join(sorted(layers))}); turn the observer off (eos.regions_every_steps=0)"
            )
        self.batches = train_chunks(ensemble.dataset, self.size, self.chunk_size, "regions")

    def __call__(self, run) -> None:
        values = []
        for model, state in zip(run.ensemble.models, run.members(), strict=True):
            fractions = region_fractions(model, state.params, self.batches, self.threshold)
            size = sum(len(b["label"]) for b in self.batches)
            values.append({**fractions, "threshold": float(self.threshold), "size": size})
        self.write(run, values)

    @classmethod
    def read(cls, records):
        """A Series with one field per region and layer, named 'region/layer'."""
        first = next((r for r in records if r.get("kind") == cls.kind), None)
        layers = list(first[REGIONS[0]]) if first else []
        fields = {
            f"{region}/{layer}": (lambda r, region=region, layer=layer: r[region][layer])
            for region in REGIONS
            for layer in layers
        }
        return read_series(records, cls.kind, fields)

    def summarize(self, records, summary) -> None:
        series = self.read(records)
        layers = [f.split("/", 1)[1] for f in series.values if f.startswith("transitioning/")]
        for i, member in enumerate(summary["members"]):
            band = {layer: series.member(f"transitioning/{layer}", i)[1] for layer in layers}
            member.update(
                initial_transitioning={layer: float(v[0]) for layer, v in band.items()},
                last_transitioning={layer: float(v[-1]) for layer, v in band.items()},
            )
