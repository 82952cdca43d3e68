"""The twins experiments end to end on tiny configs: tables, figures, one-line errors."""

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from eos_jax import bits, results
from eos_jax.data import Dataset
from eos_jax.experiments import twins
from eos_jax.training import recipe
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
    summary = twins.run(config, str(tmp_path))
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
    summary = twins.run(config, str(tmp_path))
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
    twins.run(config, str(tmp_path))
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
    edit = results.read_json(str(tmp_path / "ok" / "source_ulp_init" / "summary.json"))
    assert edit["init_edits"][1]["amount"] == 4 and edit["init_edits"][1]["index"] == [0, 0, 0, 0]
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
        ("sources", {"twins.sources": ("jitter",)}, "unknown source 'jitter'"),
        ("sources", {"twins.sources": ()}, "twins.sources must be a non-empty list"),
        ("sources", {"twins.sources": ("none", "none")}, "without repeats"),
        ("sources", {"twins.members": 1}, "at least 2 members"),
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
        ("sources", {"twins.sources": ("none",), "twins.strategy": "pmap"}, "unknown strategy"),
        ("table1", {"twins.ks": (1, 0)}, "k >= 1"),
        ("table1", {"twins.seeds": ()}, "twins.seeds must be a non-empty list"),
        ("table1", {"twins.seeds": (1, -2)}, "integers >= 0"),
        ("fig2", {"twins.lr_divisors": ()}, "twins.lr_divisors must be a non-empty list"),
        ("fig2", {"twins.lr_divisors": (1, 0)}, "integers >= 1"),
        ("fig2", {"twins.snapshots": 0}, "twins.snapshots must be an integer >= 1"),
        ("fig2", {"twins.map_snapshots": (0, 99)}, r"map_snapshots \(0, 99\)"),
        ("fig2", {"twins.watch": "conv7/kernel"}, "no tensor 'conv7/kernel' to watch"),
        ("figure3", {}, "unknown experiment 'figure3'"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, experiment, overrides, message):
    config = tiny(
        experiment if experiment in twins.EXPERIMENTS else "sources",
        **{"twins.experiment": experiment, **overrides},
    )
    with pytest.raises(ValueError, match=message):
        twins.run(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("experiment", twins.EXPERIMENTS)
def test_paper_configs_plan_and_name_real_tensors(experiment):
    """The paper recipes are too long to run here: check their plans and tensor names."""
    config = twins_paper.get_config(experiment)
    runs = twins.plan(config)
    assert len(runs) == {"table1": 6, "sources": len(config.twins.sources), "fig2": 8}[experiment]
    model = recipe.model(runs[0]["recipe"], _cifar_shaped())
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)), train=False)
    )["params"]
    names = {bits.path_name(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    assert names[config.twins.tensor] == (3, 3, 3, 16)
    assert names[config.twins.watch] == (3, 3, 32, 32)  # stage 2, block 6, first conv
    if experiment == "fig2":
        assert model.activation == "swish" and runs[-1]["recipe"].optimizer.momentum == 0


def _cifar_shaped():
    images, labels = np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int32)
    return Dataset(images, labels, images, labels, 10, "cifar-shaped", (0.5,) * 3, (0.25,) * 3)
