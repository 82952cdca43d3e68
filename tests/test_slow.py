"""Full-length runs of the shipped embedded configs (`make test-slow`, minutes on 2 cores).

They check that the headline outcomes of the README hold for the configs exactly as shipped,
not only for the shortened versions the default suite runs.
"""

import jax
import pytest

from eos_jax import recipe
from eos_jax.studies import theory
from eos_jax.training import trainer
from experiments.configs import theory_fig4_left, theory_phase

pytestmark = pytest.mark.slow


def test_default_recipe_learns_the_digits(tmp_path):
    config = recipe.default_recipe()
    config.quiet = True
    summary = trainer.train_and_evaluate(config, str(tmp_path))
    # 300 test images; the recipe reaches ~0.98. 0.95 leaves room for platform rounding.
    assert summary.finished
    assert summary.members[0].final_accuracy > 0.95


def test_restrained_instability_classes_match_the_paper(tmp_path):
    with jax.enable_x64(True):
        summary = theory.execute(theory_fig4_left.get_config(), str(tmp_path))
    observed = {row["lr"]: row["observed"] for row in summary["table"]}
    assert [observed[lr] for lr in (0.01, 0.03)] == ["converging"] * 2
    assert [observed[lr] for lr in (0.05, 0.07, 0.09)] == ["restrained"] * 3
    assert observed[0.1] == "neutral"
    assert [observed[lr] for lr in (0.11, 0.13)] == ["blow-up"] * 2


def test_phase_diagram_matches_the_predicted_boundaries(tmp_path):
    with jax.enable_x64(True):
        summary = theory.execute(theory_phase.get_config(), str(tmp_path))
    # Every run, the three on lr = 2/alpha (neutral) included, in its predicted class.
    for row in summary["table"]:
        assert row["runs as predicted"] == row["runs"], row
