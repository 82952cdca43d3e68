"""The forced linear response of a twin pair (analysis.response) where the answer is known,
its observer's records, resume and refusals, and the study built on it (studies.response).

Everything that holds float64 arrays runs inside `jax.enable_x64(True)`, as the observer
needs for its float64 copy of the step.
"""

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eos_jax import recipe
from eos_jax.analysis import lyapunov, plots, regions, response
from eos_jax.analysis.flat import StateSpace
from eos_jax.studies import response as study
from eos_jax.training import build, optim, sources, steps, trainer
from eos_jax.training.ensemble import Ensemble
from experiments.configs import response_mnist1d, response_mnist1d_resnet

# --------------------------------------------------------------------------------------
# (a) an affine update map: the full-forcing response is the twins' difference
# --------------------------------------------------------------------------------------


class Linear(nn.Module):
    """f(x) = x W: with MSE the loss is quadratic and the SGD step affine in the state."""

    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        dense = nn.Dense(2, use_bias=False, dtype=self.dtype, param_dtype=self.dtype)
        return dense(x.reshape(x.shape[0], -1))


def test_on_an_affine_map_the_full_response_is_the_twins_difference():
    """update_k twins (k = 1, 3) of a linear model with MSE, fp32, Nesterov and weight decay:
    U is affine, so N_t is float64 rounding only, and Delta - delta^r = sum of propagated
    N_t stays at float64 rounding while Delta itself is the fp32 twins' ~1e-8. The
    perturbation's forcing alone does not explain Delta: the twins' own roundings r_t are of
    the same size (a response that left r out would fail the first assertion)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        X = (rng.normal(size=(16, 3)) * np.array([1.0, 0.7, 0.3])).astype(np.float32)
        batch = {"image": jnp.asarray(X), "label": jnp.asarray(rng.integers(0, 2, 16), jnp.int32)}

        def tx(k):
            return optim.sgd(0.5, momentum=0.9, nesterov=True, weight_decay=0.01, k=k)

        model = Linear()
        step = steps.make_train_step(model, tx(1), "mse")
        twin_step = steps.make_train_step(model, tx(3), "mse")
        step64 = steps.make_train_step(Linear(jnp.float64), tx(1), "mse")
        state = steps.init_state(model, tx(1), 0, (3,))
        twin = state.replace(opt_state=tx(3).init(state.params))
        at = jax.jit(functools.partial(response.steps_at, step, twin_step))
        split = jax.jit(functools.partial(response.split_step, step64))
        plain, plain_twin = jax.jit(step), jax.jit(twin_step)
        response_f = response_r = response.flat64(twin) - response.flat64(state)
        scale = float(jnp.linalg.norm(response.flat64(state)))
        for _ in range(40):
            new, new_twin = plain(state, batch)[0], plain_twin(twin, batch)[0]
            stepped = at(state, twin, batch, batch)
            s = split(state, twin, batch, new, new_twin, stepped, response_f, response_r)
            response_f, response_r = s.response_f, s.response_r
            state, twin = new, new_twin
            delta = float(jnp.linalg.norm(s.delta))
            assert bool(s.exact)
            assert delta < 1e-6  # the fp32 twins differ by a few ulps of the state (or not yet)
            # N: float64 rounding of U at the state's scale (~1e-16 |w|), no curvature
            assert float(jnp.linalg.norm(s.nonlinear)) < 1e-14 * scale
            # delta^r = Delta up to that rounding, propagated: 1e-6 of Delta (measured ~2e-8)
            assert float(jnp.linalg.norm(s.delta - s.response_r)) <= 1e-6 * delta
        assert delta > 1e-9
        # the perturbation alone: r_t is missing, and it is as large as f_t
        assert float(jnp.linalg.norm(s.delta - s.response_f)) > 0.5 * delta


# --------------------------------------------------------------------------------------
# (b), (c) float64 twins of a smooth net: zero forcing, a tiny nonlinear part
# --------------------------------------------------------------------------------------


def tiny_config(**overrides):
    c = recipe.default_recipe()
    c.update_from_flattened_dict(
        {
            "train_subset": 256,
            "batch_size": 64,
            "num_steps": 12,
            "log_every_steps": 6,
            "eval_every_steps": 12,
            "checkpoint_every_steps": 100,
            "quiet": True,
            **overrides,
        }
    )
    return c


@pytest.fixture(scope="module")
def fp64_twins(tmp_path_factory):
    """A tanh MLP trained in float64 by twins that differ only in mantissa bit 30 of one
    first-layer weight (2^-22 relative): U' = U, so f_t = 0 and r_t = 0 exactly."""
    with jax.enable_x64(True):
        config = tiny_config()
        config.model, config.model_kwargs = "mlp", {"hidden": (16,), "activation": "tanh"}
        config.numerics.param_dtype = config.numerics.compute_dtype = "fp64"
        members = sources.make_members(config, "bitflip_init", (-1, 30), tensor="hidden1/kernel")
        ens = Ensemble(members, build.dataset(config), "unrolled")
        workdir = str(tmp_path_factory.mktemp("fp64"))
        t = trainer.Trainer(ens, config, workdir, [response.LinearResponse(1)])
        initial = [jax.tree.map(jnp.copy, s) for s in t.prepare()]
        t.run()
        return ens, initial, response.LinearResponse.read(trainer.read_metrics(workdir))


def test_with_zero_forcing_the_response_is_the_tangent_step_unnormalised(fp64_twins):
    """delta^f_t = J_{t-1} ... J_0 Delta_0: lyapunov.TangentStep started along Delta_0 on
    the same batches gives log ||delta^f_t|| = log_growth_t + log ||Delta_0|| (a response
    renormalised like the tangent would be off by log ||Delta_0|| ~ -19)."""
    ens, initial, series = fp64_twins
    with jax.enable_x64(True):
        assert np.all(series["forcing_f"][1, 1:] == 0) and np.all(series["forcing_r"][1, 1:] == 0)
        d0 = response.flat64(initial[1]) - response.flat64(initial[0])
        norm0 = float(jnp.linalg.norm(d0))
        assert 0 < norm0 < 1e-7
        tangent = lyapunov.TangentStep(ens.train_steps[0])
        s = tangent.init(initial[0]).replace(tangent=d0 / norm0)
        step, log_growth = jax.jit(tangent), [0.0]
        for t in range(12):
            s, _ = step(s, jax.device_put(ens.streams[0].batch(t)))
            log_growth.append(float(s.log_growth))
    np.testing.assert_array_equal(series.steps, np.arange(13))
    expected = np.array(log_growth) + np.log(norm0)
    np.testing.assert_allclose(np.log(series["response_f"][1]), expected, rtol=0, atol=1e-10)
    assert np.all(np.isnan(series["delta"][0]))  # member 0's row holds nothing


def test_in_float64_the_nonlinear_part_is_negligible_while_the_difference_is_small(fp64_twins):
    """||N|| / ||Delta|| ~ 1e-7 here (||Delta|| ~ 8e-9), and N is second order: on the same
    net, doubling an initial difference of 1e-3 multiplies ||N|| by 4."""
    ens, initial, series = fp64_twins
    n, delta = series["nonlinear"][1, 1:], series["delta"][1, 1:]
    assert np.all(n < 1e-6 * delta)
    np.testing.assert_allclose(series["gap_r"][1, 1:], 0, atol=1e-6 * delta.min())
    with jax.enable_x64(True):
        state, batch = initial[0], jax.device_put(ens.streams[0].batch(0))
        space = StateSpace.of(state)
        direction = jax.random.normal(jax.random.key(0), (space.dim,), jnp.float64)
        split = jax.jit(functools.partial(response.split_step, ens.train_steps[0]))
        at = jax.jit(functools.partial(response.steps_at, *ens.train_steps))
        norms = []
        for eps in (1e-3, 2e-3):
            floats = space.unflatten(space.flatten(state) + eps * direction)
            twin = jax.tree.map(lambda a, b: b if a.dtype == jnp.float64 else a, state, floats)
            stepped = at(state, twin, batch, batch)
            zero = jnp.zeros(space.dim)
            s = split(state, twin, batch, *stepped, stepped, zero, zero)
            norms.append(float(jnp.linalg.norm(s.nonlinear)))
    assert norms[1] / norms[0] == pytest.approx(4.0, rel=0.02)


# --------------------------------------------------------------------------------------
# (d) fp32 update_k twins: which forcing the divergence follows; records; resume
# --------------------------------------------------------------------------------------


def fp32_config():
    config = tiny_config(num_steps=20)
    config.model, config.model_kwargs = "mlp", {"hidden": (16, 16), "activation": "relu"}
    return config


def fp32_trainer(workdir):
    config = fp32_config()
    members = sources.make_members(config, "update_k", (1, 3))
    ens = Ensemble(members, build.dataset(config), "unrolled")
    return trainer.Trainer(ens, config, str(workdir), [response.LinearResponse(1)])


@pytest.fixture(scope="module")
def fp32_twins(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fp32")
    with jax.enable_x64(True):
        fp32_trainer(workdir).run()
    return trainer.read_metrics(str(workdir))


def test_fp32_update_k_twins_follow_the_full_forcing_not_the_perturbation_alone(fp32_twins):
    """A small ReLU MLP, k = 1 and 3, 20 steps: no pre-activation changes sign at a
    difference of ~1e-7, so N stays at float64 rounding and delta^r tracks Delta to 1e-6
    (measured 9e-8). delta^f misses the twins' own roundings r_t, which are 1.8-9x f_t from
    step 3 on: at step 20 ||Delta - delta^f|| is 0.96 ||Delta||. Without the r_t term in
    delta^r, or with f_t missing from it, the gap_r assertion fails."""
    series = response.LinearResponse.read(fp32_twins)
    delta = series["delta"][1]
    assert delta[0] == 0 and np.all(delta[1:] > 0)
    assert np.all(series["gap_r"][1, 1:] < 1e-6 * delta[1:])
    assert series["gap_f"][1, -1] > 0.5 * delta[-1]
    assert np.all(series["forcing_r"][1, 2:] > 0)
    assert np.all(series["step_exact"][1, 1:] == 1)  # f_t is the perturbation alone
    # step 1: Delta_1 = f_0 exactly (Delta_0 = 0): the responses agree with Delta
    assert series["delta"][1, 1] == series["forcing_f"][1, 1] == series["response_f"][1, 1]
    # per tensor: the squares add up to the total
    per = [v[1] for f, v in series.values.items() if f.startswith("delta/")]
    assert len(per) == 2 * 6  # params and momentum of hidden1, hidden2, head (kernel, bias)
    np.testing.assert_allclose(np.sqrt(np.sum(np.square(per), 0)), delta, rtol=1e-12)


def test_a_resumed_run_writes_the_records_of_an_uninterrupted_one(fp32_twins, tmp_path):
    """The responses are carried state, checkpointed with the twins: 7 steps, a new
    process-like trainer (nothing in memory), 13 more give the records of 20 steps."""
    with jax.enable_x64(True):
        fp32_trainer(tmp_path).run(stop_at_step=7)
        fp32_trainer(tmp_path).run()  # a new observer: nothing in memory
    resumed = [r for r in trainer.read_metrics(str(tmp_path)) if r["kind"] == "response"]
    assert resumed == [r for r in fp32_twins if r["kind"] == "response"]


@pytest.fixture(scope="module")
def digits():
    return build.dataset(tiny_config())


@pytest.mark.parametrize(
    "case, message",
    [
        ("three", "needs a twin pair \\(2 members\\), got 3"),
        ("vmap", "needs strategy 'unrolled'"),
        ("dtype", "recipes differ in numerics"),
        ("step", "steps to be steps.make_train_step"),
        ("every", "response every_steps=0 must be an integer >= 1"),
        ("x64", "needs x64"),
    ],
)
def test_setup_refuses_what_it_cannot_split(digits, case, message):
    config = tiny_config()
    members = sources.make_members(config, "update_k", (1, 3, 5) if case == "three" else (1, 3))
    make_step = steps.make_train_step
    if case == "dtype":
        members = sources.make_members(config, "dtype", ("fp32", "fp64"))
    if case == "step":

        def make_step(model, tx, loss):  # the same map, but not one the observer can copy
            train_step = steps.make_train_step(model, tx, loss)
            return lambda state, batch: train_step(state, batch)

    with jax.enable_x64(case != "x64"):
        ens = Ensemble(members, digits, "vmap" if case == "vmap" else "unrolled", make_step)
        with pytest.raises(ValueError, match=message):
            response.LinearResponse(0 if case == "every" else 1).setup(ens, 10)


# --------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------


def study_config(**overrides):
    config = response_mnist1d.get_config()
    config.update_from_flattened_dict(
        {
            "train_subset": 256,
            "batch_size": 64,
            "num_steps": 4,
            "log_every_steps": 2,
            "eval_every_steps": 4,
            "checkpoint_every_steps": 4,
            "quiet": True,
            "response.sources": ("update_k",),
            "response.lrs": (0.1,),
            "response.seeds": (0,),
            "response.switches_size": 64,
            **overrides,
        }
    )
    config.model_kwargs.widths = (4, 4)
    config.lock()  # as the command line gives it
    return config


def test_study_runs_end_to_end(tmp_path):
    config = study_config(**{"response.activations": ("relu",)})
    probe = jax.jit(lambda x: x + 1)
    probe(1.0)
    with jax.enable_x64(True):
        summary = study.execute(config, str(tmp_path / "all"))
    assert probe._cache_size() == 0  # each run's programs are released after it
    (row,) = summary["runs"]
    assert (row["activation"], row["source"], row["steps"]) == ("relu", "update_k", 4)
    assert row["delta_end"] > 0
    assert row["response_r_end"] == pytest.approx(row["delta_end"], rel=1e-6)
    assert row["rounding_jump_at"] is None and "rounding_jump" not in row  # 4 smooth steps
    assert row["leaves_at"] is None and row["restrained_at"] is None
    assert row["top_layer_end"].split()[0] in ("conv1", "conv2", "head")
    assert np.isfinite(row["exponent_late"])
    for name in ("summary.json", "response.csv", "response.md", "response.png"):
        assert os.path.exists(tmp_path / "all" / name)
    # every activation x source x lr x seed is a run; ulp_init edits one ulp of conv1/kernel
    planned = study.plan(
        study_config(
            **{
                "response.activations": ("relu", "swish"),
                "response.sources": ("update_k", "ulp_init"),
                "response.seeds": (0, 1),
            }
        )
    )
    assert len(planned) == 2 * 2 * 2
    ulp = [r for r in planned if r.source == "ulp_init"][0]
    assert ulp.members[1].init_edit.tensor == "conv1/kernel"
    assert ulp.recipe.model_kwargs.activation == "relu" and planned[-1].activation == "swish"


def test_observed_steps_stop_the_response_and_switches_but_not_the_run(tmp_path):
    config = study_config(
        **{"response.activations": ("relu",), "num_steps": 8, "response.observed_steps": 3}
    )
    with jax.enable_x64(True):
        summary = study.execute(config, str(tmp_path / "w"))
    (run,) = summary["runs"]
    records = trainer.read_metrics(str(tmp_path / "w" / run["name"]))
    assert response.LinearResponse.read(records).steps.tolist() == [0, 1, 2, 3]
    assert regions.Switches.read(records).steps.tolist() == [0, 1, 2, 3]
    assert lyapunov.Lyapunov.read(records).steps.tolist() == list(range(9))
    assert (run["steps"], run["run_steps"]) == (3, 8)
    assert run["churn_end"] >= 0 and run["weight_D_end"] > 0
    growth = lyapunov.Lyapunov.read(records)["log_growth"][0]
    assert run["exponent_observed"] == pytest.approx(growth[3] / 3, rel=1e-12)


@pytest.mark.parametrize("last_step", [0, 2.5, True])
def test_an_observer_refuses_a_bad_last_step(last_step):
    with pytest.raises(ValueError, match=f"switches last_step={last_step!r} must be an integer"):
        regions.Switches(1, last_step=last_step).check_every_steps("switches")


def _forecast_rows(target_of, n=8, source="update_k"):
    """n finished runs, each its own member 0 (seed), with random features; both targets
    target_of(first switch)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        first = int(rng.integers(5, 60))
        delta_end = float(10 ** rng.uniform(-8, 0))
        growth, exponent = float(rng.normal()), float(rng.normal())
        rows.append(
            study.ResponseRow(
                f"run{i}",
                "relu" if i % 2 else "swish",
                source,
                0.05 * (1 + i % 3),
                i,
                "finished",
                study.Events(60, first_switch=first),
                study.ObservedEnd(
                    delta_end=delta_end, delta_growth_late=growth, exponent_observed=exponent
                ),
                run_end=study.RunEnd(60, target_of(first), target_of(first)),
            )
        )
    return rows


def test_forecast_finds_a_feature_that_determines_the_end_and_scores_it_leave_one_out():
    rows = _forecast_rows(lambda first: 10 ** (-3 + 0.02 * first))  # log10 target linear
    skill, predictions = study.forecast(rows, churn_floor=1e-5)
    exact = [s for s in skill if s.feature == "first switch (step)"]
    assert len(exact) == 2 * 3  # all runs, swish only, relu only; churn and D
    assert all(s.rms_error < 1e-9 for s in exact)
    assert all(s.skill == pytest.approx(1.0) for s in exact)
    noise = [s for s in skill if s.feature.startswith("finite-time")]
    assert all(s.skill < 0.5 for s in noise)  # a random feature does not predict
    assert {p.feature for p in predictions} == {"first switch (step)"}
    for p in predictions:
        assert p.predicted == pytest.approx(p.observed, rel=1e-8)


def test_forecast_floors_churn_drops_unfinished_runs_and_needs_four_runs():
    rows = _forecast_rows(lambda first: 0.0 if first < 30 else 0.01)
    rows[0] = dataclasses.replace(rows[0], status="diverged")
    skill, predictions = study.forecast(rows, churn_floor=1e-4)
    churn = [p for p in predictions if p.target == "churn_end" and p.runs_of == "all runs"]
    assert len(churn) == 7
    assert sorted({round(p.observed, 12) for p in churn}) == [1e-4, 0.01]
    # D = 0 is no run to predict on a log scale; a constant target is nothing to predict
    assert not [s for s in skill if s.target == "weight_D_end" and s.runs > 3]
    assert study.forecast(rows[:4], churn_floor=1e-4) == ([], [])  # 3 finished runs
    # the leave-one-out line is fitted without the point it predicts
    x, y = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0, 10.0])
    assert study._leave_one_out(x, y, [0, 1, 2, 3])[3] == pytest.approx(3.0)
    # points that share a key are left out together (runs that share member 0)
    y = np.array([0.0, 1.0, 10.0, 10.0])
    assert study._leave_one_out(x, y, [0, 1, 2, 3])[3] > 10  # the copy at x = 2 pulls it up
    assert study._leave_one_out(x, y, [0, 1, 2, 2])[3] == pytest.approx(3.0)


def test_response_figure_has_a_panel_per_activation_and_source(tmp_path):
    steps_ = list(range(5))
    curve = {"steps": steps_, "delta": [0, 1e-8, 1e-7, 1e-5, 1e-3], "first_switches": [3]}
    curve.update(response_r=[0, 1e-8, 1e-7, 1e-6, 1e-6], response_f=[0, 1e-8, 2e-8, 3e-8, 4e-8])
    curves = {
        f"{a}_{s}": {**curve, "activation": a, "source": s, "label": "lr 0.1", "leaves_at": 4}
        for a in ("relu", "swish")
        for s in ("update_k", "ulp_init")
    }
    plots.response_curves(curves, str(tmp_path / "r.png"))
    assert os.path.getsize(tmp_path / "r.png") > 0


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("response.activations", ("sigmoid",), "response.activations"),
        ("response.sources", ("dtype",), "response.sources"),
        ("response.lrs", (0.1, 0.1), r"response.lrs=\(0.1, 0.1\) \(a repeat\)"),
        ("response.seeds", (-1,), "response.seeds"),
        ("response.ks", (1, 1), "two different k"),
        ("response.ulps", 0, "nonzero"),
        ("response.every_steps", 0, "every_steps"),
        ("response.leave_ratio", 1.0, "leave_ratio"),
        ("response.observed_steps", 0, "response.observed_steps=0 must be None or"),
        ("model", "small_cnn", "has no option"),
    ],
)
def test_bad_study_settings_fail_before_anything_is_written(tmp_path, field, value, message):
    config = study_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=message):
        study.execute(config, str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


def test_the_study_without_x64_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="needs x64"):
        study.execute(study_config(), str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


def test_forecast_groups_the_runs_of_each_source_where_there_are_several():
    rows = _forecast_rows(lambda first: 10 ** (-3 + 0.02 * first))
    rows = [
        dataclasses.replace(row, source="update_k" if i < 4 else "ulp_init")
        for i, row in enumerate(rows)
    ]
    groups = {s.runs_of for s in study.forecast(rows, churn_floor=1e-5)[0]}
    assert groups == {"all runs", "swish only", "relu only", "update_k only", "ulp_init only"}
    # a second source's copy of each run (the same member 0 and end) does not help it
    rows = [dataclasses.replace(row, source="a") for row in rows]
    copies = [dataclasses.replace(row, name=row.name + "b", source="b") for row in rows]
    alone = study.forecast(rows, 1e-5)[0]
    doubled = study.forecast(rows + copies, 1e-5)[0]
    skill = {(s.runs_of, s.target, s.feature): s.skill for s in alone}
    for s in doubled:
        if s.runs_of == "all runs":
            assert s.skill == pytest.approx(skill["all runs", s.target, s.feature])
    one = _forecast_rows(lambda first: 10 ** (-3 + 0.02 * first), source="update_k")
    assert "update_k only" not in {s.runs_of for s in study.forecast(one, 1e-5)[0]}


def test_the_resnet_study_plans_the_paper_fidelity_resnet_and_edits_its_first_block():
    config = response_mnist1d_resnet.get_config()
    planned = study.plan(config)
    assert len(planned) == 3 * 2 * 2 * 3  # activations x sources x lrs x seeds
    ulp = next(r for r in planned if r.source == "ulp_init")
    assert ulp.members[1].init_edit.tensor == "stage1_block1/conv1/kernel"
    r = planned[0].recipe
    assert (r.model, r.num_epochs, tuple(r.optimizer.decay_epochs)) == ("resnet1d_8", 10, ())
    assert r.model_kwargs.use_batch_norm and r.augment and r.optimizer.nesterov
    assert config.response.observed_steps == 63  # the first epoch
    with pytest.raises(ValueError, match="unknown experiment 'x'; known: full, forecast"):
        response_mnist1d_resnet.get_config("x")


@pytest.mark.slow  # ~45 s CPU. Faster, the same code: the CNN twins here, BatchNorm statistics
# in the flat state (tests/test_linearisation.py), the ResNet's switches (tests/test_switches.py)
def test_resnet_twins_with_batch_norm_and_shifts_follow_the_full_forcing(tmp_path):
    """The whole state (parameters, momentum, BatchNorm statistics) of the BN ResNet with
    random shifts is split: the recomputed step has the trainer's bits at every step, the
    full response is the twins' difference while ||N|| is negligible, and every
    pre-activation of the ResNet is counted."""
    config = response_mnist1d_resnet.get_config()
    config.update_from_flattened_dict(
        {
            "train_subset": 128,
            "batch_size": 64,
            "num_steps": 3,
            "log_every_steps": 3,
            "eval_every_steps": 3,
            "checkpoint_every_steps": 3,
            "quiet": True,
            "response.activations": ("relu",),
            "response.sources": ("update_k",),
            "response.lrs": (0.1,),
            "response.seeds": (0,),
            "response.switches_size": 32,
            "response.observed_steps": None,
        }
    )
    with jax.enable_x64(True):
        (row,) = study.execute(config, str(tmp_path))["runs"]
    records = trainer.read_metrics(str(tmp_path / row["name"]))
    series = response.LinearResponse.read(records)
    assert series["step_exact"][1, 1:].tolist() == [True] * 3
    assert np.all(series["nonlinear"][1, 1:] < 1e-6 * series["delta"][1, 1:])
    np.testing.assert_allclose(series["ratio_r"][1, 1:], 1.0, rtol=1e-6)
    assert any(f.startswith("delta/.batch_stats") for f in series.values)
    switched = [f for f in regions.Switches.read(records).values if f.startswith("switched/")]
    assert len(switched) == 7


def test_a_rounding_jump_is_the_first_value_above_every_earlier_one_by_the_factor():
    r = np.array([np.nan, 1e-15, 4e-7, 5e-7, 4.9e-7, 1.8e-4, 1e-6, 1e-2])
    assert study.first_jump(r, 10.0) == 5  # not index 2: step 1 starts from identical states
    assert study.first_jump(r[:5], 10.0) is None
    gaps = np.array([np.nan, 1.0, np.nan, 2.0, 15.0, 300.0])  # NaN records are skipped
    assert study.first_jump(gaps, 10.0) == 5


def test_the_forecast_shows_the_most_skilful_feature_not_the_smallest_error():
    """The first rounding jump, read on 4 runs that end alike, has a small error but no
    skill; the first switch, read on all 8, a larger error and real skill: it is shown."""
    rng = np.random.default_rng(1)
    ends = np.array([1e-4, 1e-3, 1e-2, 1e-1, 0.02, 0.0201, 0.0202, 0.0203])
    rows = _forecast_rows(lambda first: 0.0)
    for i, (row, end) in enumerate(zip(rows, ends, strict=True)):
        first = float(np.log10(end) + rng.normal(0, 0.3))
        jump = float(rng.normal()) if i >= 4 else None
        rows[i] = dataclasses.replace(
            row,
            activation="relu",
            events=dataclasses.replace(row.events, first_switch=first, rounding_jump_at=jump),
            run_end=study.RunEnd(60, float(end), float(end)),
        )
    skill, predictions = study.forecast(rows, churn_floor=1e-5)
    scores = {s.feature: s for s in skill if s.runs_of == "all runs"}
    jump, switch = scores["first rounding jump (step)"], scores["first switch (step)"]
    assert jump.rms_error < switch.rms_error and jump.skill < 0
    assert switch.skill > 0.5
    assert {p.feature for p in predictions} == {"first switch (step)"}
