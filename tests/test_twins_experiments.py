"""The twins experiments end to end on tiny configs: tables, figures, one-line errors."""

import csv
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from eos_jax import bits, results
from eos_jax.data import Dataset
from eos_jax.studies import twins
from eos_jax.training import build
from eos_jax.training.summary import RunSummary
from experiments.configs import twins_embedded, twins_paper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.num_steps=8",
    "--config.batch_size=64",
    "--config.eval_every_steps=4",
    "--config.model_kwargs.widths=(8, 16)",
    "--config.twins.members=2",
]


def tiny(experiment, **overrides):
    config = twins_embedded.get_config(experiment)
    config.update_from_flattened_dict(
        {
            "num_steps": 8,
            "batch_size": 64,
            "eval_every_steps": 4,
            "checkpoint_every_steps": 4,
            "model_kwargs.widths": (8, 16),
            "twins.members": 3,
            **overrides,
        }
    )
    return config


def test_table1_writes_table_with_both_spreads(tmp_path):
    config = tiny("table1", **{"twins.seeds": (1, 2), "twins.ks": (1, 3, 5)})
    summary = twins.execute(config, str(tmp_path))
    acc = np.array(summary["accuracy"])
    assert acc.shape == (2, 3)
    rows = list(csv.DictReader(open(tmp_path / "table1.csv")))
    assert [r["seed"] for r in rows] == ["1", "2"]  # integers only: loads cleanly into pandas
    assert float(rows[0]["std over perturbations"]) == pytest.approx(np.std(acc[0]))
    (over_seeds,) = csv.DictReader(open(tmp_path / "table1_std_over_seeds.csv"))
    assert float(over_seeds["k=3"]) == pytest.approx(np.std(acc[:, 1]))
    assert "| seed | k=1 | k=3 | k=5 |" in summary["table"]
    for name in ("table1.md", "table1.png", "seed_1/summary.json", "seed_2/metrics.jsonl"):
        assert os.path.exists(tmp_path / name), name


def test_sources_table_has_one_row_per_source_and_a_silent_control(tmp_path):
    config = tiny("sources", **{"twins.sources": ("none", "update_k", "init_seed", "aug_seed")})
    summary = twins.execute(config, str(tmp_path))
    rows = {r["source"]: r for r in summary["rows"]}
    assert list(rows) == ["none", "update_k", "init_seed", "aug_seed"]
    assert rows["aug_seed"]["members"] == 0 and "no augmentation" in rows["aug_seed"]["note"]
    assert not (tmp_path / "source_aug_seed").exists()
    assert rows["none"]["weight D"] == 0 and rows["none"]["churn"] == 0
    assert rows["update_k"]["weight D"] > 0 and rows["init_seed"]["kind"] == "stochastic"
    assert rows["init_seed"]["weight D"] > rows["update_k"]["weight D"]
    assert os.path.exists(tmp_path / "sources.png") and os.path.exists(tmp_path / "sources.md")


def test_fig2_keeps_pde_time_fixed_across_learning_rates(tmp_path):
    config = tiny(
        "fig2", **{"twins.lr_divisors": (1, 2), "twins.snapshots": 4, "twins.map_snapshots": (0, 4)}
    )
    twins.execute(config, str(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / "fig2.csv")))
    for n in ("1", "2"):
        mine = [r for r in rows if r["n"] == n]
        assert [int(r["snapshot"]) for r in mine] == [0, 1, 2, 3, 4]
        assert float(mine[-1]["pde_time"]) == pytest.approx(0.4)
        assert float(mine[0]["D"]) == 0
    assert float(rows[-1]["D"]) > 0  # k = 3 left k = 1 within 8 steps of plain SGD
    assert os.path.exists(tmp_path / "fig2.png") and os.path.exists(tmp_path / "fig2_maps.png")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.twins", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_runs_one_source_alone_and_rejects_bad_input_in_one_line(tmp_path):
    config = "--config=experiments/configs/twins_embedded.py:sources"
    ok = run_cli(
        config,
        f"--workdir={tmp_path / 'ok'}",
        *TINY,
        "--config.twins.sources=('ulp_init',)",
        "--config.twins.member_values=(0, 4)",
    )
    assert ok.returncode == 0, ok.stderr
    assert "| ulp_init | rounding | 2 |" in ok.stdout
    edit = RunSummary.read(str(tmp_path / "ok" / "source_ulp_init")).init_edits[1]
    assert edit["amount"] == 4 and edit["index"] == [0, 0, 0, 0]
    bad = run_cli(
        config,
        f"--workdir={tmp_path / 'bad'}",
        *TINY,
        "--config.twins.sources=('ulp_init',)",
        "--config.twins.index=(0, 0, 0, 99)",
    )
    assert bad.returncode == 1 and "out of range" in bad.stderr, bad.stderr
    assert bad.stderr.strip().count("\n") == 0, bad.stderr
    assert not os.path.exists(tmp_path / "bad")


@pytest.mark.parametrize(
    "experiment, overrides, message",
    [
        (
            "sources",
            {"twins.sources": ("jitter",)},
            r"twins.sources=\('jitter',\): unknown source 'jitter'; known: none, update_k",
        ),
        ("sources", {"twins.sources": ()}, "twins.sources must be a non-empty list"),
        ("sources", {"twins.sources": ("none", "none")}, "without repeats"),
        ("sources", {"twins.members": 1}, "twins.members=1 must be an integer >= 2"),
        ("sources", {"twins.divergence_every_steps": 0}, "twins.divergence_every_steps=0"),
        (
            "sources",
            {"twins.sources": ("update_k",), "twins.member_values": (-1, 2)},
            r"twins.member_values=\(-1, 2\): update_k needs integers k >= 1",
        ),
        (
            "sources",
            {"twins.sources": ("ulp_init", "update_k"), "twins.member_values": (0, 1)},
            "are for one source",
        ),
        (
            "sources",
            {"twins.sources": ("ulp_init",), "twins.tensor": "conv7/kernel"},
            "no tensor 'conv7/kernel'",
        ),
        (
            "sources",
            {"twins.sources": ("none",), "twins.strategy": "pmap"},
            "twins.strategy='pmap': unknown strategy",
        ),
        ("table1", {"twins.ks": (1, 0)}, "k >= 1"),
        ("table1", {"twins.seeds": ()}, "twins.seeds must be a non-empty list"),
        ("table1", {"twins.seeds": (1, -2)}, "integers >= 0"),
        ("fig2", {"twins.lr_divisors": ()}, "twins.lr_divisors must be a non-empty list"),
        ("fig2", {"twins.lr_divisors": (1, 0)}, "integers >= 1"),
        ("fig2", {"twins.snapshots": 0}, "twins.snapshots must be an integer >= 1"),
        ("fig2", {"twins.map_snapshots": (0, 99)}, r"map_snapshots \(0, 99\)"),
        ("fig2", {"twins.watch": "conv7/kernel"}, "no tensor 'conv7/kernel' to watch"),
        ("figure3", {}, "twins.experiment='figure3'; known: table1, fig2"),
        ("nested", {"twins.compare": ("seed", "update_k")}, "one or more rounding sources"),
        ("nested", {"twins.bases": ()}, "twins.bases must be a non-empty list"),
        ("nested", {"twins.bases": (3,)}, r"twins.bases=\(3,\) names one base; .* 2 or more"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, experiment, overrides, message):
    config = tiny(
        experiment if experiment in twins.EXPERIMENTS else "sources",
        **{"twins.experiment": experiment, **overrides},
    )
    with pytest.raises(ValueError, match=message):
        twins.execute(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("experiment", twins.EXPERIMENTS)
def test_paper_configs_plan_and_name_real_tensors(experiment):
    """The paper recipes are too long to run here: check their plans and tensor names."""
    config = twins_paper.get_config(experiment)
    runs = twins.plan(config)
    assert (
        len(runs)
        == {
            "table1": 6,
            "sources": len(config.twins.sources),
            "fig2": 8,
            "sweep": 6,
            "factors": 2,
            "nested": 12,
        }[experiment]
    )
    model = build.model(runs[0].recipe, _cifar_shaped())
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)), train=False)
    )["params"]
    names = {bits.path_name(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    assert names[config.twins.tensor] == (3, 3, 3, 16)
    assert names[config.twins.watch] == (3, 3, 32, 32)  # stage 2, block 6, first conv
    if experiment == "fig2":
        assert model.activation == "swish" and runs[-1].recipe.optimizer.momentum == 0


def _cifar_shaped():
    images, labels = np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int32)
    return Dataset(images, labels, images, labels, 10, "cifar-shaped", (0.5,) * 3, (0.25,) * 3)


def test_nested_pools_each_base_and_compares_with_the_seed_members(tmp_path):
    """Per-example correctness read back from predictions.npz gives the table's numbers: the
    seed members pooled as one group, the twins' spread as the mean over bases."""
    config = tiny("nested", **{"twins.bases": (1, 2), "twins.members": 3, "num_steps": 12})
    summary = twins.execute(config, str(tmp_path))

    def correct(name):
        saved = np.load(tmp_path / name / "predictions.npz")
        return np.stack([saved[f"member{i}"] == saved["labels"] for i in range(3)])

    seeds = np.concatenate([correct("seed_0"), correct("seed_1")])
    groups = {g["source"]: g for g in summary["groups"]}
    assert groups["seed"]["members"] == 6 and groups["update_k"]["bases"] == 2
    assert groups["seed"]["observed_std"] == pytest.approx(np.std(seeds.mean(1), ddof=1))
    per_base = [np.var(correct(f"base_{b}_update_k").mean(1), ddof=1) for b in (1, 2)]
    assert groups["update_k"]["observed_std"] == pytest.approx(np.sqrt(np.mean(per_base)))
    assert "update_k/seed std ratio, set level, on the test set (300 signals)" in summary["verdict"]
    power = {(r["level"], r["bases"], r["twins"]) for r in summary["power"]}
    assert ("distribution", 8, 6) in power
    for name in ("nested.md", "nested.png", "nested_bases.csv", "power.csv"):
        assert os.path.exists(tmp_path / name), name


def test_a_nested_design_grows_in_parts_reading_back_its_finished_ensembles(tmp_path):
    """A long study runs in parts: the same workdir with more bases trains only the new
    bases' twins and seed members, and its config.json is the grown design's."""
    config = tiny("nested", **{"twins.bases": (1, 2), "twins.members": 2})
    twins.execute(config, str(tmp_path))
    finished = {
        n: os.path.getmtime(tmp_path / n / "summary.json") for n in ("base_1_update_k", "seed_1")
    }
    os.remove(tmp_path / "summary.json")  # tabulate again, at the grown size
    config.twins.bases = (1, 2, 3)
    summary = twins.execute(config, str(tmp_path))
    for name, mtime in finished.items():
        assert os.path.getmtime(tmp_path / name / "summary.json") == mtime, name
    groups = {g["source"]: g for g in summary["groups"]}
    assert groups["update_k"]["bases"] == 3 and groups["seed"]["members"] == 6
    assert results.read_json(str(tmp_path / "config.json"))["twins"]["bases"] == [1, 2, 3]
    config.twins.members = 3  # the seed members' values depend on it: never free
    os.remove(tmp_path / "summary.json")
    with pytest.raises(results.WorkdirError, match="changed: twins.members"):
        twins.execute(config, str(tmp_path))


def test_the_nested_figure_draws_a_ratio_without_estimate_as_words_not_a_warning(tmp_path):
    """At 40 epochs the test set's own part explains both spreads: the distribution-level
    ratio on it is inf [0, inf], which matplotlib turned into a RuntimeWarning."""
    from eos_jax.analysis import plots, statistics
    from eos_jax.studies.twins import nested

    def estimate(value, low, high):
        return statistics.Estimate(value, low, high, 0.95, "pivotal", (8,))

    std, unbounded = estimate(0.001, 0.0008, 0.002), estimate(np.inf, 0.0, np.inf)
    row = nested.GroupRow(
        "update_k", "rounding", "test", 2, 8, 0.98, std, 0.001, std, std, unbounded
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.nested([row], [], str(tmp_path / "nested.png"))
    assert os.path.getsize(tmp_path / "nested.png") > 0


def test_sources_report_intervals_the_noise_floor_and_the_verdict(tmp_path):
    config = tiny("sources", **{"twins.sources": ("update_k", "seed"), "twins.members": 3})
    summary = twins.execute(config, str(tmp_path))
    rows = {r["source"]: r for r in summary["rows"]}
    seed = rows["seed"]
    assert seed["final acc std low"] <= seed["final acc std"] <= seed["final acc std high"]
    assert seed["churn low"] <= seed["churn"] <= seed["churn high"]
    # The noise floor is Jordan's formula on the saved final predictions.
    saved = np.load(tmp_path / "source_seed" / "predictions.npz")
    correct = np.stack([saved[f"member{i}"] == saved["labels"] for i in range(3)])
    p = 1 - correct.mean(0)  # the plug-in p(1 - p) is low by (runs - 1) / runs: unbiased
    noise = np.sum(p * (1 - p)) * 3 / 2 / p.size**2
    assert seed["test-set noise std"] == pytest.approx(np.sqrt(noise))
    assert summary["verdict"].startswith("rounding/seed accuracy-std ratio ")
    assert "(95% CI, normal, 3+3 members)" in summary["verdict"]
    assert os.path.exists(tmp_path / "onset.png")


def test_sweep_compares_the_two_sources_at_each_learning_rate(tmp_path):
    config = tiny("sweep", **{"twins.sweep_lrs": (0.05, 0.1), "twins.members": 2})
    runs = twins.plan(config)
    assert [r.name for r in runs] == [
        "lr_0.05_update_k",
        "lr_0.05_seed",
        "lr_0.1_update_k",
        "lr_0.1_seed",
    ]
    summary = twins.execute(config, str(tmp_path))
    assert [r["lr"] for r in summary["rows"]] == [0.05, 0.1]
    for row in summary["rows"]:
        assert row["ratio low"] <= row["ratio"] <= row["ratio high"]
    assert os.path.exists(tmp_path / "sweep.png") and os.path.exists(tmp_path / "sweep.csv")


@pytest.mark.parametrize(
    "compare, message",
    [
        (("seed", "update_k"), "must name a rounding source, then a stochastic one"),
        (("update_k", "jitter"), "unknown source 'jitter'"),
    ],
)
def test_the_verdict_compares_a_rounding_with_a_stochastic_source(tmp_path, compare, message):
    with pytest.raises(ValueError, match=message):
        twins.execute(tiny("sweep", **{"twins.compare": compare}), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_mnist1d_headline_configs_plan_the_documented_ensembles():
    from experiments.configs import twins_mnist1d

    headline = twins.plan(twins_mnist1d.get_config("headline"))
    assert [r.name for r in headline] == ["source_update_k", "source_seed"]
    assert [len(r.members) for r in headline] == [12, 12]
    names = [r.name for r in twins.plan(twins_mnist1d.get_config("sources"))]
    assert "source_none" not in names and "source_dtype" not in names
    assert len(twins.plan(twins_mnist1d.get_config("sweep"))) == 8
    assert len(twins.plan(twins_mnist1d.get_config("table1"))) == 6


def test_heldout_spread_and_its_decomposition(tmp_path):
    """With a held-out set of the same distribution, each member's accuracy on it, the
    spread across members with its interval, the test-set part of the final test spread
    (sqrt(var(last test) - var(held-out))), and a second verdict line."""
    from experiments.configs import twins_mnist1d

    config = twins_mnist1d.get_config("headline")
    config.update_from_flattened_dict(
        {
            "train_subset": 256,
            "batch_size": 64,
            "num_steps": 6,
            "eval_every_steps": 3,
            "log_every_steps": 3,
            "checkpoint_every_steps": 3,
            "quiet": True,
            "twins.members": 3,
        }
    )
    config.model_kwargs.widths = (8, 8)
    config.dataset_kwargs.heldout_size = 500
    summary = twins.execute(config, str(tmp_path))
    for row in summary["rows"]:
        members = RunSummary.read(str(tmp_path / f"source_{row['source']}"))
        heldout, last = members.column("heldout_accuracy"), members.column("last_test_accuracy")
        assert row["heldout acc std"] == pytest.approx(np.std(heldout), abs=1e-15)
        expected = np.sqrt(max(0.0, np.var(last) - np.var(heldout)))
        assert row["test-set part std"] == pytest.approx(expected, abs=1e-15)
        assert row["heldout acc std low"] <= row["heldout acc std"] <= row["heldout acc std high"]
    assert "heldout acc std" in summary["table"]
    lines = summary["verdict"].splitlines()
    assert "held-out (distribution) ratio" in lines[1]
    assert lines[2].startswith("on the test set: one rounding against a new seed: ")
    assert lines[3].startswith("on the distribution (held-out set): one rounding against a ")


def test_resnet_headline_config_nests_8_twins_in_32_bases_against_256_seeds():
    from experiments.configs import twins_mnist1d_resnet

    config = twins_mnist1d_resnet.get_config()
    planned = twins.plan(config)
    bases = [r for r in planned if r.name.startswith("base_")]
    seeds = [r for r in planned if r.name.startswith("seed_")]
    assert [r.name for r in bases] == [f"base_{b}_update_k" for b in range(1, 33)]
    assert [r.recipe.seeds.init for r in bases] == list(range(1, 33))
    assert [m.config.optimizer.k for m in bases[0].members] == [1, 3, 5, 7, 9, 11, 13, 15]
    seed_values = [m.config.seeds.init for r in seeds for m in r.members]
    assert seed_values == list(range(1000, 1256))  # 256 seeds, none a base's
    assert config.dataset_kwargs.heldout_size == 100_000 and config.model == "resnet1d_8"
    sizes = twins_mnist1d_resnet.get_config("sources")
    assert [len(r.members) for r in twins.plan(sizes)] == [24, 24]


def test_the_demo_is_the_nested_headline_at_10_epochs_and_8_bases():
    from experiments.configs import twins_mnist1d_resnet

    demo = twins_mnist1d_resnet.get_config("demo")
    headline = twins_mnist1d_resnet.get_config("nested")
    assert len(twins.plan(demo)) == 16 and demo.twins.members == 2  # 8 bases, 8 x 2 seeds
    assert demo.num_epochs == 10 and tuple(demo.optimizer.decay_epochs) == (2, 4, 6, 8)
    shorter = {"num_epochs": 10, "optimizer.decay_epochs": (2, 4, 6, 8)}
    headline.update_from_flattened_dict(
        {**shorter, "twins.bases": tuple(range(1, 9)), "twins.members": 2}
    )
    assert _flat(demo) == _flat(headline)


def test_the_length_trend_is_the_nested_headline_trained_longer():
    from experiments.configs import twins_mnist1d_resnet

    for name, epochs in (("nested80", 80), ("nested160", 160)):
        longer = twins_mnist1d_resnet.get_config(name)
        headline = twins_mnist1d_resnet.get_config("nested")
        decays = (epochs // 5, 2 * epochs // 5, 3 * epochs // 5, 4 * epochs // 5)
        headline.update_from_flattened_dict(
            {"num_epochs": epochs, "optimizer.decay_epochs": decays}
        )
        assert _flat(longer) == _flat(headline) and longer.twins == headline.twins, name
    assert twins_mnist1d_resnet.length(160).endswith("decay_epochs=(32,64,96,128)")


def test_the_demo_takes_one_thread_from_the_command_line(tmp_path):
    """Its recipe is built with overrides, and keeps the typed placeholders: the
    one-thread environment of docs/twins.md parses, and the run stops at the next check."""
    out = run_cli(
        "--config=experiments/configs/twins_mnist1d_resnet.py:demo",
        "--config.numerics.cpu_threads=1",
        "--config.twins.members=0",
        f"--workdir={tmp_path}",
    )
    assert out.returncode != 0 and "cpu_threads" not in out.stderr
    assert "twins.members" in out.stderr.strip().splitlines()[-1]


def test_resnet_factors_change_one_ingredient_at_a_time():
    from experiments.configs import twins_mnist1d_resnet

    config = twins_mnist1d_resnet.get_config("factors")
    planned = twins.plan(config)
    assert len(planned) == 2 * (1 + len(twins_mnist1d_resnet.FACTORS))
    assert all(len(r.members) == 12 for r in planned)
    base = _flat(config)
    for label, text, variant in twins.compared.factor_recipes(config)[1:]:
        changed = {k for k, v in _flat(variant).items() if base[k] != v}
        assert changed == {field.partition("=")[0] for field in text.split()}, label
    with pytest.raises(
        ValueError, match="unknown experiment 'table1'; known: nested, nested80, nested160, sources"
    ):
        twins_mnist1d_resnet.get_config("table1")


def _flat(config) -> dict:
    """A recipe as {dotted field: value}, twins settings left out."""
    out = {}
    for key, value in config.items():
        if key == "twins":
            continue
        if hasattr(value, "items"):
            out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        else:
            out[key] = value
    return out


def test_factors_compare_the_recipe_and_each_variant_and_keep_a_diverged_one(tmp_path):
    factors = ("lr x2: optimizer.lr=0.1", "huge lr: optimizer.lr=1e9")
    config = tiny("factors", **{"twins.factors": factors, "twins.members": 2})
    names = [r.name for r in twins.plan(config)]
    assert names == [
        "recipe_update_k",
        "recipe_seed",
        "lr_x2_update_k",
        "lr_x2_seed",
        "huge_lr_update_k",
        "huge_lr_seed",
    ]
    summary = twins.execute(config, str(tmp_path))
    rows = {row["factor"]: row for row in summary["rows"]}
    assert list(rows) == ["recipe", "lr x2", "huge lr"]
    assert rows["lr x2"]["overrides"] == "optimizer.lr=0.1" and rows["recipe"]["overrides"] == ""
    for label in ("recipe", "lr x2"):
        row = rows[label]
        assert row["ratio low"] <= row["ratio"] <= row["ratio high"]
        assert row["members"] == "2+2"
        sub = {
            kind: RunSummary.read(str(tmp_path / f"{twins.common.slug(label)}_{kind}"))
            for kind in ("update_k", "seed")
        }
        stds = [np.std(sub[k].column("final_accuracy")) for k in sub]
        assert row["rounding final acc std"] == pytest.approx(stds[0], abs=1e-12)
        assert row["ratio"] == pytest.approx(stds[0] / stds[1], rel=1e-9)
    assert rows["huge lr"]["note"].startswith("diverged: ")
    assert "ratio" not in rows["huge lr"]
    assert os.path.exists(tmp_path / "factors.png") and os.path.exists(tmp_path / "factors.md")


@pytest.mark.parametrize(
    "factors, message",
    [
        (("lr x2 optimizer.lr=0.1",), "is not 'label: field=value ...'"),
        (("lr: optimizer.lrr=0.1",), "twins.factors 'optimizer.lrr=0.1'.*unknown field"),
        (("a: optimizer.lr=0.1", "a: optimizer.lr=0.2"), "labels must differ"),
        (("recipe: optimizer.lr=0.1",), "labels must differ"),
        (("members: twins.members=4",), "setting of the whole study"),
    ],
)
def test_bad_factors_fail_before_anything_is_written(tmp_path, factors, message):
    with pytest.raises(ValueError, match=message):
        twins.execute(tiny("factors", **{"twins.factors": factors}), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
