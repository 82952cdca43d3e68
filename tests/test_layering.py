"""Imports point downwards only (docs/architecture.md): no package cycles, no flags in the
library. Read from the source with ast, so a new upward import fails here at once."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# package -> packages it must never import
FORBIDDEN = {
    "eos_jax/recipe.py": ("eos_jax.data", "eos_jax.models", "eos_jax.training", "eos_jax.analysis"),
    "eos_jax/data": (
        "eos_jax.models",
        "eos_jax.training",
        "eos_jax.analysis",
        "eos_jax.studies",
    ),
    "eos_jax/models": (
        "eos_jax.data",
        "eos_jax.training",
        "eos_jax.analysis",
        "eos_jax.studies",
    ),
    "eos_jax/training": ("eos_jax.analysis", "eos_jax.studies"),
    "eos_jax/analysis": ("eos_jax.studies",),
    "eos_jax": ("experiments", "absl.flags", "ml_collections.config_flags"),
}


def imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("where", sorted(FORBIDDEN))
def test_imports_point_downwards(where):
    target = ROOT / where
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    bad = [
        f"{f.relative_to(ROOT)} imports {name}"
        for f in files
        for name in sorted(imported_modules(f))
        if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[where])
    ]
    assert not bad, bad


def test_models_do_not_import_each_other_for_shared_pieces():
    """Shared layers and activations live in layers.py / activations.py, not in a model."""
    for f in sorted((ROOT / "eos_jax/models").glob("*.py")):
        models = {"eos_jax.models.resnet", "eos_jax.models.vgg", "eos_jax.models.small"}
        models |= {"eos_jax.models.cnn1d", "eos_jax.models.one_layer"}
        if f.name != "__init__.py":
            assert not imported_modules(f) & models, f
