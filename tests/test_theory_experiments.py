"""Smoke runs of every theory experiment on tiny configs, through experiments.theory.run."""

import json
import os

import jax
import pytest

from eos_jax import results
from experiments import theory
from experiments.configs import (
    theory_fig1,
    theory_fig3,
    theory_fig4_left,
    theory_fig4_right,
    theory_phase,
)


def _tiny(module, **overrides):
    """The experiment's config shrunk to a 24x24 checkerboard, a 6x6 kernel and a few steps."""
    config = module.get_config()
    if "image_size" in config:
        config.image_size, config.kernel_size = 24, 6
    config.update(overrides)
    return config


CASES = {
    "heat": (_tiny(theory_fig1, steps=12, shown_steps=(0, 12)), "theory_fig1_heat.png"),
    "linear_pde": (_tiny(theory_fig3, steps=20, alphas=(1e3, 1e7)), "theory_fig3_linear_pde.png"),
    "restrained": (_tiny(theory_fig4_left, steps=20, lrs=(0.01, 0.2)), "theory_fig4_left_loss.png"),
    "twins": (
        _tiny(theory_fig4_right, steps=20, lrs=(0.01,), window=5),
        "theory_fig4_right_twins.png",
    ),
    "phase": (_tiny(theory_phase, steps=12, alphas=(20.0,), lrs=(0.01, 0.3)), "theory_phase.png"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_experiment_writes_its_tables_and_figure(name, tmp_path):
    config, figure = CASES[name]
    workdir = str(tmp_path / name)
    with jax.enable_x64(True):
        summary = theory.run(config, workdir)
    assert summary["experiment"] == name and summary["table"]
    for file in ("summary.json", "summary.md", "config.json", "fingerprint.json", figure):
        assert os.path.getsize(os.path.join(workdir, file)) > 0, file
    assert any(f.endswith(".csv") for f in os.listdir(workdir))
    assert results.read_json(os.path.join(workdir, "fingerprint.json"))["x64"] is True
    with open(os.path.join(workdir, "summary.md")) as f:
        assert f.read().count("\n|") == len(summary["table"]) + 2  # header, rule, one per row
    json.dumps(summary)  # JSON-ready


def test_heat_smoke_classifies_both_time_steps(tmp_path):
    with jax.enable_x64(True):
        summary = theory.run(CASES["heat"][0], str(tmp_path / "heat"))
    assert [row["observed"] for row in summary["table"]] == ["stable", "unstable"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"experiment": "fig9"}, "unknown experiment"),
        ({"lrs": (0.01, -0.05)}, "positive"),
        ({"steps": 0}, "positive"),
    ],
)
def test_bad_config_is_one_clear_error(overrides, message, tmp_path):
    config = _tiny(theory_fig4_left, **overrides)
    with jax.enable_x64(True), pytest.raises(ValueError, match=message):
        theory.run(config, str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")  # nothing written for a config that cannot run


def test_finished_workdir_is_not_reused(tmp_path):
    config = CASES["heat"][0]
    with jax.enable_x64(True):
        theory.run(config, str(tmp_path / "heat"))
        with pytest.raises(results.WorkdirError, match="finished"):
            theory.run(config, str(tmp_path / "heat"))
