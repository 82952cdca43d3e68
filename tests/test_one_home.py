"""One home per concept: a second implementation of any of these fails here.

Each pattern is the mark of one concept's implementation in the library; it may appear only
in the module named for the concept. When a new module needs the concept it calls that
module (the place named in each message) instead of writing the concept again.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

ONE_HOME = {
    # the train-mode forward pass and its loss: steps.train_mode_loss
    r'mutable=\["batch_stats"\]': {"eos_jax/training/steps.py"},
    # flat vectors over a pytree: analysis.flat.StateSpace
    r"jnp\.ravel\(|ravel_pytree": {"eos_jax/analysis/flat.py"},
    # reading records by kind: an observer's `read` (training.observers.read_series)
    r'\.get\("kind"\)|\["kind"\] ==': {"eos_jax/training/observers.py"},
    # the linearised training step: linearisation.tangent_map
    r"jax\.jvp\(\s*lambda s": {"eos_jax/analysis/linearisation.py"},
    # the split of a twin pair's step and its forced responses: response.split_step
    r"def split_step": {"eos_jax/analysis/response.py"},
    # pre-activations (Regions, Switches): regions.preactivations
    r"capture_intermediates=": {"eos_jax/analysis/regions.py"},
    # one-ulp steps of a weight: bits
    r"nextafter\(": {"eos_jax/bits.py"},
    # the restraint factor: analysis.lyapunov.restraint
    r"def restraint": {"eos_jax/analysis/lyapunov.py"},
    # Table 1 rows: studies.twins.table1.table1_rows
    r"def table1_rows": {"eos_jax/studies/twins/table1.py"},
    # the microbatches check: recipe.check_microbatches
    r"microbatches.*must": {"eos_jax/recipe.py"},
    # the names of the losses: recipe.LOSSES
    r"LOSSES = ": {"eos_jax/recipe.py"},
    # 'field=value ...' variants of a recipe (eos.runs, twins.factors): recipe.with_overrides
    r"literal_eval\(|update_from_flattened_dict\(": {"eos_jax/recipe.py"},
    # the accuracy-std ratio of two compared ensembles: studies.twins.common.compare_row
    r"def compare_row": {"eos_jax/studies/twins/common.py"},
    # the spread's parts and intervals (Jordan's estimator, pivots): analysis.statistics
    r"def spread\(|chisquare\(": {"eos_jax/analysis/statistics.py"},
    # a CSV + Markdown table of rows: results.write_table
    r"write_csv\(.*\n.*markdown_table\(": {"eos_jax/results.py"},
}


def library_files():
    return sorted(p for p in (ROOT / "eos_jax").rglob("*.py"))


@pytest.mark.parametrize("pattern", list(ONE_HOME))
def test_each_concept_has_one_home(pattern):
    found = {
        str(p.relative_to(ROOT))
        for p in library_files()
        if re.search(pattern, p.read_text(), re.MULTILINE)
    }
    assert found, f"{pattern!r} is found nowhere: update this test"
    assert found <= ONE_HOME[pattern], f"{pattern!r} also in {sorted(found - ONE_HOME[pattern])}"
