"""The paper's activation regions in deep nets: the Regions and Switches observers.

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
the layers named in PREACTIVATIONS (per model and BatchNorm or not: mlp's hidden{i} dense
layers or their bn{i}; small_cnn and cnn1d's conv{i}; the ResNets' stem and first-conv
BatchNorms, or the convs themselves without BatchNorm), and the ResNet blocks' residual sums,
the one activation input no layer outputs, which the block sows. Models with BatchNorm run
in train mode over each probe chunk (the batch statistics of that chunk, as in a training
step). Other models (the VGGs, whose max-pools would need their argmax choices compared)
are refused.

Switches counts activation switches between members: per hidden layer, how many
pre-activations over the same probe set have another sign (z > 0 or not: the ReLU gate) in
member i than in member 0. A ReLU net's gradient jumps where a pre-activation changes sign,
so no linearisation follows a step across one; a smooth activation has no such jump, and
its count only says how many units crossed zero. The supported models have no max-pool
layer (strided convolutions, a global average pool), so there are no argmax choices to
compare.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from eos_jax.analysis.curvature import train_chunks
from eos_jax.analysis.one_layer.regions import REGION_THRESHOLD, REGIONS
from eos_jax.models import CNN1D, MLP, CifarResNet, SmallCNN
from eos_jax.training.observers import Observer, kind_records, read_series

# (model class, with BatchNorm) -> the regex of the '/'-joined paths (of a layer, or of a
# value a block sows) whose outputs are the activation functions' inputs
PREACTIVATIONS = {
    (MLP, False): r"hidden\d+",
    (MLP, True): r"bn\d+",
    (SmallCNN, False): r"conv\d+",
    (CNN1D, False): r"conv\d+",
    (CifarResNet, True): r"stem_bn|stage\d+_block\d+/(bn1|residual_sum)",
    (CifarResNet, False): r"stem_conv|stage\d+_block\d+/(conv1|residual_sum)",
}


def preactivation_pattern(model) -> str:
    """The regex of `model`'s pre-activation paths; ValueError for other models."""
    pattern = PREACTIVATIONS.get((type(model), bool(getattr(model, "use_batch_norm", False))))
    if pattern is None:
        known = ", ".join(dict.fromkeys(c.__name__ for c, _ in PREACTIVATIONS))
        raise ValueError(f"regions: model {type(model).__name__} is not supported; known: {known}")
    return pattern


def model_variables(state) -> dict:
    """The variables `model.apply` takes, from a member's train state."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def preactivations(model, variables, images) -> dict[str, jax.Array]:
    """{path: the inputs of an activation function} over `images`, in train mode (BatchNorm
    normalises with the statistics of `images`), read with Flax's capture_intermediates.
    Traceable: the one capture that Regions and Switches jit."""
    pattern = re.compile(preactivation_pattern(model))

    def captured(module, method_name: str) -> bool:
        return method_name == "__call__" and bool(pattern.fullmatch("/".join(module.path)))

    _, state = model.apply(
        variables,
        images,
        train=True,
        capture_intermediates=captured,
        mutable=["intermediates", "batch_stats"],
    )
    out = {}
    for path, values in traverse_util.flatten_dict(state["intermediates"]).items():
        name = "/".join(k for k in path if k != "__call__")  # a layer's output, or a sown value
        if pattern.fullmatch(name):
            out[name] = values[0]
    return out


@functools.cache
def _chunk_counts(model, threshold: float):
    """(variables, images) -> {layer: (activated, transitioning, not activated) counts}, jitted
    once per model and threshold."""

    def fn(variables, images):
        return {
            name: jnp.stack(
                [jnp.sum(z > threshold), jnp.sum(jnp.abs(z) <= threshold), jnp.sum(z < -threshold)]
            )
            for name, z in preactivations(model, variables, images).items()
        }

    return jax.jit(fn)


def region_fractions(model, variables, batches, threshold: float = REGION_THRESHOLD) -> dict:
    """{region: {layer: fraction of that layer's pre-activations over `batches`}}."""
    totals: dict[str, np.ndarray] = {}
    for b in batches:
        for name, counts in _chunk_counts(model, float(threshold))(variables, b["image"]).items():
            totals[name] = totals.get(name, 0) + np.asarray(counts, np.int64)
    return {
        region: {name: float(c[j] / c.sum()) for name, c in totals.items()}
        for j, region in enumerate(REGIONS)
    }


def check_hidden_layers(ensemble, owner: str, off: str) -> None:
    """ValueError unless the ensemble's model is supported and has a pre-activation layer;
    `off` says how to turn the observer off."""
    pattern = re.compile(preactivation_pattern(ensemble.models[0]))
    paths = [
        [k.key for k in path[:-1]]  # the layers holding each parameter
        for path, _ in jax.tree_util.tree_flatten_with_path(ensemble.param_shapes())[0]
    ]
    layers = {path[0] for path in paths}
    nested = {"/".join(path[:i]) for path in paths for i in range(1, len(path) + 1)}
    if not any(pattern.fullmatch(layer) for layer in nested):
        raise ValueError(
            f"{owner}: the model has no hidden layer to measure (layers: "
            f"{', '.join(sorted(layers))}); turn the observer off ({off})"
        )


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
        check_hidden_layers(ensemble, "regions", "eos.regions_every_steps=0")
        self.batches = train_chunks(ensemble.dataset, self.size, self.chunk_size, "regions")

    def __call__(self, run) -> None:
        values = []
        for model, state in zip(run.ensemble.models, run.members(), strict=True):
            fractions = region_fractions(
                model, model_variables(state), self.batches, self.threshold
            )
            size = sum(len(b["label"]) for b in self.batches)
            values.append({**fractions, "threshold": float(self.threshold), "size": size})
        self.write(run, values)

    @classmethod
    def read(cls, records):
        """A Series with one field per region and layer, named 'region/layer'."""
        first = next(iter(kind_records(records, cls.kind)), None)
        layers = list(first[REGIONS[0]]) if first else []
        fields = {
            f"{region}/{layer}": (lambda r, region=region, layer=layer: r[region][layer])
            for region in REGIONS
            for layer in layers
        }
        return read_series(records, cls.kind, fields)

    @staticmethod
    def transitioning(series, member: int) -> dict[str, np.ndarray]:
        """{layer: one member's transitioning fractions at the recorded steps} from a `read`
        Series ({} without records)."""
        layers = [f.split("/", 1)[1] for f in series.values if f.startswith("transitioning/")]
        return {layer: series.member(f"transitioning/{layer}", member)[1] for layer in layers}

    @classmethod
    def summary(cls, series, member: int) -> RegionsSummary:
        """One member's summary from a `read` Series: per layer, the transitioning fraction
        at the first and the last measurement."""
        band = cls.transitioning(series, member)
        return RegionsSummary(
            initial_transitioning={layer: float(v[0]) for layer, v in band.items()},
            last_transitioning={layer: float(v[-1]) for layer, v in band.items()},
        )

    def summarize(self, records, summary) -> None:
        series = self.read(records)
        for i, member in enumerate(summary.members):
            member.add(self.summary(series, i))


@dataclasses.dataclass(frozen=True)
class RegionsSummary:
    """Regions' part of a member's summary: {layer: transitioning fraction} at the first and
    the last measurement."""

    initial_transitioning: dict[str, float]
    last_transitioning: dict[str, float]


@functools.cache
def _switch_counts(reference_model, model):
    """(reference variables, variables, images) -> {layer: pre-activations whose sign
    differs}, jitted once per pair of models."""

    def fn(reference_variables, variables, images):
        ref = preactivations(reference_model, reference_variables, images)
        out = preactivations(model, variables, images)
        return {
            name: jnp.stack([jnp.sum((out[name] > 0) != (z > 0)), jnp.asarray(z.size)])
            for name, z in ref.items()
        }

    return jax.jit(fn)


def sign_switches(reference_model, reference_variables, model, variables, batches) -> dict:
    """{layer: (switched, total)}: how many of the layer's pre-activations over `batches`
    have another sign (z > 0 or not) under (model, variables) than under the reference."""
    out: dict[str, np.ndarray] = {}
    for b in batches:
        counts = _switch_counts(reference_model, model)(reference_variables, variables, b["image"])
        for name, c in counts.items():
            out[name] = out.get(name, 0) + np.asarray(c, np.int64)
    return {name: (int(c[0]), int(c[1])) for name, c in out.items()}


class Switches(Observer):
    """Per member and hidden layer, the pre-activations whose sign differs from member 0's
    over the first `size` training examples (module docstring), kind 'switches': records
    {'switched': {layer: count}, 'total': {layer: pre-activations compared}}, at step 0,
    every `every_steps` steps and at the last (up to `last_step`, None: the run's). `read`
    gives 'switched/layer' and 'fraction/layer'; `first_switch` the first recorded step with
    a switch."""

    at_start = True
    kind = "switches"

    def __init__(
        self,
        every_steps: int,
        size: int | None = 512,
        chunk_size: int = 512,
        last_step: int | None = None,
    ):
        self.every_steps, self.size, self.chunk_size = every_steps, size, chunk_size
        self.last_step = last_step

    def setup(self, ensemble, num_steps: int) -> None:
        """ValueError for bad settings, fewer than 2 members or an unsupported model."""
        self.check_every_steps("switches")
        if len(ensemble) < 2:
            raise ValueError(
                f"switches compare members with member 0: need >= 2 members, got {len(ensemble)}"
            )
        for model in ensemble.models:
            preactivation_pattern(model)
        check_hidden_layers(ensemble, "switches", "do not pass Switches")
        self.batches = train_chunks(ensemble.dataset, self.size, self.chunk_size, "switches")

    def __call__(self, run) -> None:
        models, states = run.ensemble.models, run.members()
        values = []
        for model, state in zip(models, states, strict=True):
            counts = sign_switches(
                models[0], model_variables(states[0]), model, model_variables(state), self.batches
            )
            values.append(
                {
                    "switched": {name: c[0] for name, c in counts.items()},
                    "total": {name: c[1] for name, c in counts.items()},
                }
            )
        self.write(run, values)

    @classmethod
    def read(cls, records):
        """A Series with 'switched/layer' (count) and 'fraction/layer' per hidden layer."""
        first = next(iter(kind_records(records, cls.kind)), None)
        layers = list(first["switched"]) if first else []
        fields = {}
        for layer in layers:
            fields[f"switched/{layer}"] = lambda r, layer=layer: r["switched"][layer]
            fields[f"fraction/{layer}"] = lambda r, layer=layer: (
                r["switched"][layer] / r["total"][layer]
            )
        return read_series(records, cls.kind, fields)

    @staticmethod
    def first_switch(series) -> dict[str, np.ndarray]:
        """{layer: per member, the first recorded step with a switch in that layer (NaN if
        none)}, from a `read` Series."""
        out = {}
        for field, counts in series.values.items():
            if field.startswith("switched/"):
                first = np.full(len(counts), np.nan)
                for i, row in enumerate(counts):
                    hit = np.flatnonzero(row > 0)
                    if hit.size:
                        first[i] = series.steps[hit[0]]
                out[field.split("/", 1)[1]] = first
        return out

    def summarize(self, records, summary) -> None:
        first = self.first_switch(self.read(records))
        for i, member in enumerate(summary.members):
            member.update(
                first_switch={
                    layer: None if np.isnan(v[i]) else int(v[i]) for layer, v in first.items()
                }
            )
