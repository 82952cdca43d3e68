"""Full-batch gradient descent (microbatches, stop at a goal), the Sharpness observer and the
EoS experiment plans, on tiny MLPs."""

import os

import jax
import numpy as np
import pytest

from eos_jax import recipe
from eos_jax.analysis import curvature, linearisation, orbit, sharpness
from eos_jax.data import normalize, to_unit_float
from eos_jax.studies import eos
from eos_jax.training import build, steps, trainer
from eos_jax.training.ensemble import Ensemble
from eos_jax.training.observers import Observer
from eos_jax.training.sources import Member
from eos_jax.training.summary import RunSummary
from experiments.configs import eos_digits

DIGITS_EXPERIMENTS = ("plateau", "weight_decay", "weight_decay_bn", "weight_decay_probe")
DIGITS_EXPERIMENTS += ("momentum", "depth", "weight_decay_edge", "adam", "adamw")


def full_batch_config(**overrides):
    """A tiny fc-tanh MLP, MSE, full-batch GD on the first 64 digits."""
    c = recipe.default_recipe()
    c.model, c.model_kwargs = "mlp", {"hidden": (16,)}
    c.train_subset = c.batch_size = 64
    c.loss = "mse"
    c.optimizer.update(lr=0.05, momentum=0.0, nesterov=False, weight_decay=0.0, decay_epochs=())
    c.num_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 20, 5, 10, 10
    c.quiet = True
    c.update_from_flattened_dict(overrides)
    return c


def test_microbatches_sum_to_the_full_batch_gradient():
    config = full_batch_config()
    dataset = build.dataset(config)
    batch = build.stream(config, dataset).batch(0)
    model = build.model(config, dataset)
    tx = build.optimizer(config, 1)
    state = steps.init_state(model, tx, 0, dataset.image_shape)
    one = jax.jit(steps.make_train_step(model, tx, "mse"))
    four = jax.jit(steps.make_train_step(model, tx, "mse", microbatches=4))
    (s1, m1), (s4, m4) = one(state, batch), four(state, batch)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    assert float(m1["accuracy"]) == float(m4["accuracy"])
    assert build.step_options(config) == {}
    assert build.step_options(full_batch_config(microbatches=4)) == {"microbatches": 4}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"microbatches": 5}, "config.microbatches=5 must divide every batch; batches of [64]"),
        ({"microbatches": 0}, "config.microbatches=0 must be an integer >= 1"),
        ({"stop_at_train_accuracy": 1.5}, "config.stop_at_train_accuracy=1.5 must be in"),
        ({"stop_at_train_loss": float("nan")}, "config.stop_at_train_loss=nan must be"),
    ],
)
def test_bad_full_batch_fields_fail_before_anything_is_written(tmp_path, override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        trainer.train_and_evaluate(full_batch_config(**override), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_microbatches_must_divide_a_kept_last_batch():
    config = full_batch_config(train_subset=70, drop_last_batch=False, microbatches=4)
    with pytest.raises(ValueError, match=r"batches of \[6\] examples do not"):
        build.stream(config, build.dataset(config))


def test_goal_ends_the_run_as_if_it_were_the_last_step(tmp_path):
    config = full_batch_config(stop_at_train_loss=10.0, num_steps=40)  # reached at step 5
    summary = trainer.train_and_evaluate(config, str(tmp_path))
    assert summary.finished
    assert summary.goal_reached_at_step == summary.steps == 5
    assert summary.planned_steps == 40 and summary.goal == "train loss <= 10.0"
    records = trainer.read_metrics(str(tmp_path))
    assert max(r["step"] for r in records) == 5
    assert [r["step"] for r in records if r["kind"] == "eval"] == [5]  # the final evaluation
    assert os.path.exists(tmp_path / "checkpoints" / "5")
    assert os.path.exists(tmp_path / "predictions.npz")


class KeepLast(Observer):
    """Keeps the member states of the last step (for checks against the records)."""

    def due(self, step, run):
        return step == run.num_steps

    def __call__(self, run):
        self.states = run.members()


def test_midpoints_are_measured_when_every_step_is_measured(tmp_path):
    """every_steps = 1: each measurement step is also the step before the next one, whose
    iterate must be kept too (it used to be skipped, and no midpoint was ever measured)."""
    config = full_batch_config(num_steps=4)
    ensemble = Ensemble([Member("gd", config)], build.dataset(config), "unrolled")
    observer = sharpness.Sharpness(1, size=48, chunk_size=48, midpoint=True)
    trainer.Trainer(ensemble, config, str(tmp_path), [observer]).run()
    measured = sharpness.Sharpness.read(trainer.read_metrics(str(tmp_path)))
    assert measured.steps.tolist() == [0, 1, 2, 3, 4]
    assert measured.member("midpoint_sharpness", 0)[0].tolist() == [1, 2, 3, 4]


def test_sharpness_observer_matches_top_eigenvalues_on_the_same_subset(tmp_path):
    config = full_batch_config(num_steps=10, **{"optimizer.weight_decay": 0.01})
    dataset = build.dataset(config)
    ensemble = Ensemble([Member("gd", config)], dataset, "unrolled")
    observer, keep = sharpness.Sharpness(5, size=48, chunk_size=32, k=2, tol=1e-4), KeepLast()
    trainer.Trainer(ensemble, config, str(tmp_path), [observer, keep]).run()
    records = [r for r in trainer.read_metrics(str(tmp_path)) if r["kind"] == "sharpness"]
    assert [r["step"] for r in records] == [0, 5, 10]
    last, state, model = records[-1], keep.states[0], ensemble.models[0]
    # the same Hessian built independently: the first 48 training examples in one chunk
    images, labels = dataset.split("train")
    batch = {
        "image": normalize(to_unit_float(images[:48]), dataset.mean, dataset.std),
        "label": labels[:48],
    }
    op = curvature.hvp_fn(model, "mse", state.params, {}, [batch])
    top = curvature.top_eigenvalues(op, op.dim, k=2, tol=1e-6)
    np.testing.assert_allclose(last["eigenvalues"], top.eigenvalues, rtol=1e-3)
    assert max(last["residuals"]) < 1e-4
    assert last["total_sharpness"] == pytest.approx(last["sharpness"] + 0.01)
    assert RunSummary.read(str(tmp_path)).members[0].last_sharpness == last["sharpness"]
    # the full-set loss: that of the full batch (the same 64 examples in another order)
    full = build.stream(config, dataset).batch(0)
    logits = model.apply({"params": state.params}, full["image"], train=False)
    loss = steps.loss_fn("mse", logits, full["label"])
    assert last["train_set_loss"] == pytest.approx(float(loss), rel=1e-5)


def test_sharpness_observer_refuses_bad_settings():
    config = full_batch_config()
    ensemble = Ensemble([Member("gd", config)], build.dataset(config), "unrolled")
    with pytest.raises(ValueError, match=r"sharpness size=100 must be an integer in \[1, 64\]"):
        sharpness.Sharpness(5, size=100).setup(ensemble, 10)
    with pytest.raises(ValueError, match="sharpness tol=2 must be in"):
        sharpness.Sharpness(5, tol=2).setup(ensemble, 10)


@pytest.mark.parametrize("experiment", DIGITS_EXPERIMENTS)
def test_digits_configs_plan_runs_at_their_predicted_thresholds(experiment):
    config = eos_digits.get_config(experiment)
    runs = eos.plan(config)
    predicted = [r.predicted for r in runs]
    expected = {
        "plateau": [30, 40, 50, 60],
        "weight_decay": [c * (1 - s) for c in (40, 20, 10) for s in eos_digits.SHIFTS]
        + [s / f for s in eos_digits.PROBE_SHARPNESS.values() for f in (1.5, 3.0)],
        "weight_decay_probe": [200 - wd for wd in eos_digits.WDS],
        "weight_decay_bn": [40, 39.6, 38],
        "momentum": [40] * 4,
        "depth": [40] * 5,
        "weight_decay_edge": [
            s * f for s in eos_digits.PROBE_SHARPNESS.values() for f in eos_digits.EDGE_FRACTIONS
        ]
        + [eos_digits.PROBE_SHARPNESS[0.03] / f for f in (1.5, 3.0)]
        + [eos_digits.PROBE_SHARPNESS[0.1] / 1.5],
        "adam": [38 / lr for lr in eos_digits.ADAM_LRS] + [38 / eos_digits.ADAM_LRS[1]] * 2,
        "adamw": [38 / lr * (1 - lr * wd / 2) for lr, wd in eos_digits.ADAMW_RUNS],
    }[experiment]
    np.testing.assert_allclose(predicted, expected, rtol=1e-12)
    assert len({r.name for r in runs}) == len(runs)
    if experiment == "depth":
        assert runs[2].recipe.model_kwargs.hidden == (200, 200, 200)


@pytest.mark.parametrize(
    "runs, message",
    [
        ((), "eos.runs is empty"),
        (("optimizer.lr",), "is not field=value"),
        (("optimizer.lrr=0.1",), "unknown field"),
        (("optimizer.lr=-1",), "config.optimizer.lr=-1.0 must be a finite number > 0"),
        (("optimizer.decay_epochs=(1,)",), "needs a constant lr"),
        # a sweep-wide setting inside one run used to be accepted and silently ignored
        (("optimizer.lr=0.05 eos.sharpness_every_steps=10",), "setting of the whole study"),
        # wrong types used to end in a ConfigDict traceback
        (("num_steps=10.5",), "eos.runs 'num_steps=10.5'"),
        (("optimizer.lr='abc'",), "eos.runs \"optimizer.lr='abc'\""),
        # used to fail after config.json and the run folder were written
        (("model_kwargs.hidden=()",), "hidden"),
        # lr * wd > 2: a negative predicted threshold, and a run that exited 0 at loss 6e29
        (("optimizer.lr=0.5 optimizer.weight_decay=5.0",), "weight decay alone makes"),
        (("optimizer.name='adam' optimizer.weight_decay=0.1",), "coupled decay enters its moments"),
        (("optimizer.name='adam' optimizer.beta1=1.5",), r"beta1=1.5 must be a number in \[0, 1\)"),
    ],
)
def test_bad_eos_runs_fail_before_anything_is_written(tmp_path, runs, message):
    config = eos_digits.get_config("plateau")
    config.eos.runs = runs
    with pytest.raises(ValueError, match=message):
        eos.execute(config, str(tmp_path / "eos"))
    assert not os.path.exists(tmp_path / "eos")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("regions_every_steps", -1, "eos.regions_every_steps=-1 must be None or >= 0"),
        ("regions_size", 1001, r"eos.regions_size=1001 must be an integer in \[1, 1000\]"),
        ("regions_threshold", -1.0, "eos.regions_threshold=-1.0 must be a finite number > 0"),
    ],
)
def test_bad_regions_settings_fail_before_anything_is_written(tmp_path, field, value, message):
    config = eos_digits.get_config("plateau")
    config.eos[field] = value
    with pytest.raises(ValueError, match=message):
        eos.execute(config, str(tmp_path / "eos"))
    assert not os.path.exists(tmp_path / "eos")


def test_eos_sweep_writes_predicted_and_observed_per_run(tmp_path):
    config = eos_digits.get_config("plateau")
    config.update_from_flattened_dict(
        {
            "train_subset": 64,
            "batch_size": 64,
            "log_every_steps": 5,
            "eval_every_steps": 10,
            "quiet": True,
            "eos.size": 64,
            "eos.chunk_size": 32,
            "eos.sharpness_every_steps": 5,
            "eos.regions_size": 48,
            "eos.regions_every_steps": 10,
            "eos.edge_every_steps": 10,
            "eos.midpoint": True,
            "eos.orbit_window": 20,
        }
    )
    config.model_kwargs.hidden = (16,)
    config.eos.runs = (
        "optimizer.lr=0.1 num_steps=20",
        "optimizer.lr=0.05 optimizer.momentum=0.5 num_steps=10",
    )
    summary = eos.execute(config, str(tmp_path))
    first, second = summary["runs"]
    assert first["predicted_threshold"] == pytest.approx(20.0)
    assert (
        second["predicted_threshold"] == pytest.approx(60.0) and second["optimizer"] == "heavy_ball"
    )
    for key in ("lr", "weight_decay", "momentum", "observed_plateau", "initial_sharpness"):
        assert np.isfinite(first[key])
    records = trainer.read_metrics(str(tmp_path / first["name"]))
    values = [r["sharpness"] for r in records if r["kind"] == "sharpness" and r["step"] >= 10]
    assert first["observed_plateau"] == pytest.approx(float(np.median(values)))
    bands = [r for r in records if r["kind"] == "regions"]
    assert [r["step"] for r in bands] == [0, 10, 20] and bands[0]["size"] == 48
    assert first["transitioning_last"] == f"hidden1 {bands[-1]['transitioning']['hidden1']:.2f}"
    assert "transitioning_last" in summary["table"]
    names = ("summary.json", "eos.csv", "eos.md", "sharpness.png", "predicted_vs_observed.png")
    for name in (*names, "regions.png"):
        assert os.path.exists(tmp_path / name)
    # the edge mode: recorded at 0, 10, 20; |mu| in the table
    edge = linearisation.EdgeRadius.read(records)
    assert edge.steps.tolist() == [0, 10, 20] and np.all(edge["radius"] > 0)
    assert 0 < first["edge_radius"] < 10 and "edge_radius" in summary["table"]
    # midpoints: measured at every measurement but step 0 (no previous iterate); the step
    # before a measurement writes nothing; the Rayleigh quotient along the oscillation is at
    # most the top eigenvalue at the same point (to the eigensolver's tolerance)
    measured = sharpness.Sharpness.read(records)
    assert measured.steps.tolist() == [0, 5, 10, 15, 20]
    mid_steps, mid = measured.member("midpoint_sharpness", 0)
    assert mid_steps.tolist() == [5, 10, 15, 20] and np.all(mid > 0)
    along = measured.member("oscillation_curvature", 0)[1]
    assert np.all(along <= mid * (1 + 1e-3)), (along, mid)
    assert np.isfinite(first["midpoint_plateau"]) and np.isfinite(first["oscillation_plateau"])
    # the orbit: u . w at each of the last 20 steps (1-20), its period in the table
    assert orbit.Orbit.read(records).steps.tolist() == list(range(1, 21))
    assert first["period"] in ("1", "2", "4", "8", "irregular") and first["phase_tolerance"] > 0


def test_a_sweep_whose_every_run_diverged_is_a_finished_table(tmp_path):
    """It used to stop at the predicted-vs-observed figure (no plateau to plot), after the
    table and before summary.json: a study that reran every time."""
    config = eos_digits.get_config("plateau")
    config.update_from_flattened_dict(
        {"train_subset": 64, "batch_size": 64, "quiet": True, "eos.size": 64}
    )
    config.update_from_flattened_dict({"eos.chunk_size": 64, "eos.regions_every_steps": 0})
    config.model_kwargs.hidden = (16,)
    config.eos.runs = ("optimizer.lr=5.0 num_steps=40",)  # 2/lr = 0.4, far below the start
    summary = eos.execute(config, str(tmp_path))
    assert [row["phase"] for row in summary["runs"]] == ["diverged"]
    assert os.path.exists(tmp_path / "summary.json") and os.path.exists(tmp_path / "eos.md")
    assert not os.path.exists(tmp_path / "predicted_vs_observed.png")


@pytest.mark.parametrize(
    "experiment, expected",
    [
        ("plateau", [20, 40]),
        ("cross_entropy", [5, 10, 20]),
        ("complexity", [20] * 6),
        ("resnet", [20]),
        ("adam", [38 / 1e-3, 38 / 2.5e-3]),  # (2 + 2 beta1) / ((1 - beta1) lr)
    ],
)
def test_mnist1d_configs_plan_runs_at_their_predicted_thresholds(experiment, expected):
    from experiments.configs import eos_mnist1d

    runs = eos.plan(eos_mnist1d.get_config(experiment))
    np.testing.assert_allclose([r.predicted for r in runs], expected, rtol=1e-12)
    assert len({r.name for r in runs}) == len(runs)
