"""The twins experiments end to end on tiny configs: tables, figures, one-line errors."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from eos_jax import results
from experiments import twins
from experiments.configs import twins_embedded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.num_steps=8", "--config.batch_size=64", "--config.eval_every_steps=4",
        "--config.model_kwargs.widths=(8, 16)", "--config.twins.members=2"]


def tiny(experiment, **overrides):
    config = twins_embedded.get_config(experiment)
    config.update_from_flattened_dict({
        "num_steps": 8, "batch_size": 64, "eval_every_steps": 4, "checkpoint_every_steps": 4,
        "model_kwargs.widths": (8, 16), "twins.members": 3, **overrides})
    return config


def test_table1_writes_table_with_both_spreads(tmp_path):
    config = tiny("table1", **{"twins.seeds": (1, 2), "twins.ks": (1, 3, 5)})
    summary = twins.run(config, str(tmp_path))
    acc = np.array(summary["accuracy"])
    assert acc.shape == (2, 3)
    rows = list(csv.DictReader(open(tmp_path / "table1.csv")))
    assert [r["seed"] for r in rows] == ["1", "2", "std over seeds"]
    assert float(rows[0]["std over perturbations"]) == pytest.approx(np.std(acc[0]))
    assert float(rows[2]["k=3"]) == pytest.approx(np.std(acc[:, 1]))
    assert "| seed | k=1 | k=3 | k=5 |" in summary["table"]
    for name in ("table1.md", "table1.png", "seed_1/summary.json", "seed_2/metrics.jsonl"):
        assert os.path.exists(tmp_path / name), name


def test_sources_table_has_one_row_per_source_and_a_silent_control(tmp_path):
    config = tiny("sources", **{"twins.sources": ("none", "update_k", "init_seed")})
    summary = twins.run(config, str(tmp_path))
    rows = {r["source"]: r for r in summary["rows"]}
    assert list(rows) == ["none", "update_k", "init_seed"]
    assert rows["none"]["weight D"] == 0 and rows["none"]["churn"] == 0
    assert rows["update_k"]["weight D"] > 0 and rows["init_seed"]["kind"] == "stochastic"
    assert rows["init_seed"]["weight D"] > rows["update_k"]["weight D"]
    assert os.path.exists(tmp_path / "sources.png") and os.path.exists(tmp_path / "sources.md")


def test_fig2_keeps_pde_time_fixed_across_learning_rates(tmp_path):
    config = tiny("fig2", **{"twins.lr_divisors": (1, 2), "twins.snapshots": 4,
                             "twins.map_snapshots": (0, 4)})
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
    return subprocess.run([sys.executable, "-m", "experiments.twins", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_runs_one_source_alone_and_rejects_bad_input_in_one_line(tmp_path):
    config = "--config=experiments/configs/twins_embedded.py:sources"
    ok = run_cli(config, f"--workdir={tmp_path / 'ok'}", *TINY,
                 "--config.twins.sources=('ulp_init',)", "--config.twins.member_values=(0, 4)")
    assert ok.returncode == 0, ok.stderr
    assert "| ulp_init | rounding | 2 |" in ok.stdout
    edit = results.read_json(str(tmp_path / "ok" / "source_ulp_init" / "summary.json"))
    assert edit["init_edits"][1]["amount"] == 4 and edit["init_edits"][1]["index"] == [0, 0, 0, 0]
    for bad, message in [
        ("--config.twins.sources=('jitter',)", "unknown source 'jitter'"),
        ("--config.twins.tensor=conv7/kernel", "no tensor 'conv7/kernel'"),
        ("--config.twins.index=(0, 0, 0, 99)", "out of range"),
    ]:
        out = run_cli(config, f"--workdir={tmp_path / 'bad'}", *TINY,
                      "--config.twins.sources=('ulp_init',)", bad)
        assert out.returncode == 1 and message in out.stderr, out.stderr
        assert out.stderr.strip().count("\n") == 0, out.stderr
        assert not os.path.exists(tmp_path / "bad")
    k0 = run_cli("--config=experiments/configs/twins_embedded.py:table1",
                 f"--workdir={tmp_path / 'bad'}", "--config.twins.ks=(1, 0)")
    assert k0.returncode == 1 and "k >= 1" in k0.stderr and not os.path.exists(tmp_path / "bad")
