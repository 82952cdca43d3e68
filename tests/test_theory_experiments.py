"""Smoke runs of every theory experiment on tiny configs, through eos_jax.studies.theory.execute."""

import json
import os

import jax
import numpy as np
import pytest

from eos_jax import results
from eos_jax.studies import theory
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
        summary = theory.execute(config, workdir)
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
        summary = theory.execute(CASES["heat"][0], str(tmp_path / "heat"))
    assert [row["observed"] for row in summary["table"]] == ["stable", "unstable"]


BAD_CONFIGS = {  # id: (config module, overrides, what the one-line message must say)
    "unknown experiment": (
        theory_fig4_left,
        {"experiment": "fig9"},
        "config.experiment='fig9'; known: heat",
    ),
    "negative lr": (theory_fig4_left, {"lrs": (0.01, -0.05)}, r"config.lrs = .*numbers > 0"),
    "no lrs": (theory_fig4_left, {"lrs": ()}, "config.lrs = ().*non-empty"),
    "restrained steps 0": (theory_fig4_left, {"steps": 0}, r"config.steps = 0 .*>= 4"),
    "negative alpha": (theory_fig4_left, {"alpha": -1.0}, r"config.alpha = -1.0 .*>= 0"),
    "nan alpha": (theory_fig4_left, {"alpha": float("nan")}, "config.alpha = nan"),
    "label above 1": (theory_fig4_left, {"label": 2.0}, r"config.label = 2.0 .*\[0, 1\]"),
    "kernel too big": (theory_fig4_left, {"kernel_size": 24}, "kernel_size < image_size = 24"),
    "heat fields missing": (
        theory_fig4_left,
        {"experiment": "heat"},
        "experiment 'heat' needs .*missing: points, dts, shown_steps",
    ),
    "shown step past the end": (
        theory_fig1,
        {"shown_steps": (0, 50)},
        r"config.shown_steps = \(0, 50\) .*\[0, steps = 20\]",
    ),
    "heat one step": (theory_fig1, {"steps": 1}, r"config.steps = 1 .*>= 3"),
    "heat two points": (theory_fig1, {"points": 2}, r"config.points = 2 .*>= 3"),
    "negative dt": (theory_fig1, {"dts": (0.4, -0.8)}, "config.dts"),
    "linear_pde steps 2": (theory_fig3, {"steps": 2}, r"config.steps = 2 .*>= 3"),
    "linear_pde negative alpha": (theory_fig3, {"alphas": (1e7, -1.0)}, r"config.alphas.*>= 0"),
    "normalization": (theory_fig3, {"normalization": "max"}, "'mean' or 'sum'"),
    "phase steps 3": (theory_phase, {"steps": 3}, r"config.steps = 3 .*>= 4"),
    "phase alpha 0": (theory_phase, {"alphas": (0.0, 20.0)}, r"config.alphas.*> 0"),
    "k_pair zero": (theory_fig4_right, {"k_pair": (1, 0)}, r"config.k_pair = \(1, 0\)"),
    "k_pair of three": (theory_fig4_right, {"k_pair": (1, 3, 5)}, "two positive integers"),
    "k_pair float": (theory_fig4_right, {"k_pair": (1.0, 3.0)}, "two positive integers"),
    "window 0": (theory_fig4_right, {"window": 0}, r"config.window = 0 .*>= 1"),
    "amplified level": (theory_fig4_right, {"amplified_level": 0.0}, "amplified_level = 0.0"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_clear_error_before_any_file(case, tmp_path):
    module, overrides, message = BAD_CONFIGS[case]
    config = _tiny(module, **overrides)
    with jax.enable_x64(True), pytest.raises(ValueError, match=message) as error:
        theory.execute(config, str(tmp_path / "bad"))
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "bad")  # nothing written for a config that cannot run


def test_shipped_configs_validate():
    for module in (theory_fig1, theory_fig3, theory_fig4_left, theory_fig4_right, theory_phase):
        theory.validate(module.get_config())


def test_heat_runs_at_the_smallest_allowed_steps(tmp_path):
    config = _tiny(theory_fig1, steps=3, shown_steps=(0, 3))
    with jax.enable_x64(True):
        summary = theory.execute(config, str(tmp_path / "heat"))
    assert all(np.isfinite(row["observed growth/step"]) for row in summary["table"])


def test_finished_workdir_is_not_reused(tmp_path):
    config = CASES["heat"][0]
    with jax.enable_x64(True):
        theory.execute(config, str(tmp_path / "heat"))
        with pytest.raises(results.WorkdirError, match="finished"):
            theory.execute(config, str(tmp_path / "heat"))
