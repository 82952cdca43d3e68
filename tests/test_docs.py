"""The docs name only what exists: every module, function and file path that README.md,
docs/*.md and benchmarks/README.md name resolves in this repository.

What is checked, in the whole text of each doc (inline code, code blocks and prose):
- dotted names starting with `eos_jax.`, `experiments.` or `benchmarks.` (a call
  `name(...)` counts by its name), and the names of `from eos_jax... import a, b` lines:
  the longest prefix that is a module is found without running it (a main's absl flags are
  never defined), the module is imported only when attributes follow, then getattr;
- in fenced code blocks, names reached through what the doc's code blocks import
  (`from eos_jax.analysis import curvature as cv` makes `cv.hvp_fn` the name
  `eos_jax.analysis.curvature.hvp_fn`; prose is not read this way, where `ensemble` may
  be a variable);
- repository paths: a token with a `/` that ends in a file extension (.py, .md, .png, ...)
  or, for a folder, has at least two parts and ends in `/` (`launch/tpu/`): it must exist
  relative to the repository root (`:suffix` and `::test` are not part of the path);
  absolute and home paths, work directories (`workdirs/...`) and placeholders (`<...>`,
  `*`, `{...}`, `...`, an upper-case part such as `N` or `W`) are not repository paths;
- Markdown link targets, relative to the doc's own folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import re

import jax

from eos_jax import numerics

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
DOCS = (*DOCS, "benchmarks/README.md")

PACKAGES = "(?:eos_jax|experiments|benchmarks)"
DOTTED = re.compile(rf"(?<![\w./-]){PACKAGES}(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(
    rf"\bfrom[ \t]+({PACKAGES}(?:\.\w+)*)[ \t]+import[ \t]+(?:\(([^)]*)\)|([\w \t,]+))"
)
PATH = re.compile(r"[\w.~<>*${}/-]*/[\w.~<>*${}/-]*")
IMPORT_AS = re.compile(rf"^[ \t]*import[ \t]+({PACKAGES}(?:\.\w+)*)[ \t]+as[ \t]+(\w+)", re.M)
FENCED = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
EXTENSIONS = (".py", ".md", ".png", ".ipynb", ".sh", ".sbatch", ".json", ".txt", ".toml")
WORKDIR_ROOTS = ("workdirs", "tmp", ".venv")
PLACEHOLDER_PART = re.compile(r"^[A-Z_]+$")


def dotted_names(text: str) -> set[str]:
    """Every dotted name of the project's packages in the text (without a trailing `(...)`)."""
    names = set(DOTTED.findall(text))
    for module, parenthesised, imported in FROM_IMPORT.findall(text):
        for item in (parenthesised or imported).split(","):
            words = item.split()
            if words and words[0] != "*":
                names.add(f"{module}.{words[0]}")
    return names


def code_names(text: str) -> set[str]:
    """Dotted names in the fenced code blocks reached through what those blocks import."""
    code = "\n".join(FENCED.findall(text))
    aliases = dict((alias, module) for module, alias in IMPORT_AS.findall(code))
    for module, parenthesised, imported in FROM_IMPORT.findall(code):
        for item in (parenthesised or imported).split(","):
            words = item.split()
            if words and words[0] != "*":
                aliases[words[-1]] = f"{module}.{words[0]}"
    names = set()
    for alias, target in aliases.items():
        for rest in re.findall(rf"(?<![\w.]){alias}((?:\.[A-Za-z_]\w*)+)", code):
            names.add(target + rest)
    return names


def missing_name(name: str) -> str | None:
    """None if `name` resolves, else why not."""
    parts = name.split(".")
    module, spec, i = parts[0], importlib.util.find_spec(parts[0]), 1
    if spec is None:
        return f"no module {module}"
    try:
        # Walk down packages by their specs: a plain module is found, never run, unless
        # attributes follow it.
        while i < len(parts) and spec.submodule_search_locations is not None:
            child = importlib.util.find_spec(f"{module}.{parts[i]}")
            if child is None:
                break
            module, spec, i = f"{module}.{parts[i]}", child, i + 1
        obj = importlib.import_module(module) if i < len(parts) else None
    except Exception as e:  # a module that no longer imports is a problem to report
        return f"importing {module} failed: {e!r}"
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            return f"{'.'.join(parts[:j])} has no attribute {parts[j]!r}"
        obj = getattr(obj, parts[j])
    return None


def is_repository_path(token: str) -> bool:
    """Whether a token names a file or folder of the repository (see the module docstring)."""
    if token.startswith(("/", "~", "$", "-")) or any(c in token for c in "<>*{}$") or ".." in token:
        return False
    parts = token.rstrip("/").split("/")
    if not all(parts) or parts[0] in WORKDIR_ROOTS:
        return False
    if any(PLACEHOLDER_PART.match(p) for p in parts):
        return False
    if token.endswith("/"):
        return len(parts) >= 2
    return token.endswith(EXTENSIONS)


def problems(text: str, doc: str = "README.md") -> list[str]:
    """'doc: name: why' for each thing the text names that does not exist; `doc` (relative
    to the root) anchors the links."""
    found = []
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if target and "://" not in target and not target.startswith("mailto:"):
            if not (ROOT / doc).parent.joinpath(target).exists():
                found.append(f"{doc}: {target}: link target does not exist")
    prose = LINK.sub("]()", text)  # link targets are relative to the doc, checked above
    for token in sorted(set(PATH.findall(prose))):
        token = token.strip(".")  # a sentence's full stop, or `...`
        if is_repository_path(token) and not (ROOT / token).exists():
            found.append(f"{doc}: {token}: no such file or folder")
    for name in sorted(dotted_names(text) | code_names(text)):
        why = missing_name(name)
        if why:
            found.append(f"{doc}: {name}: {why}")
    return found


def test_docs_name_only_what_exists():
    x64, started = jax.config.jax_enable_x64, numerics._backend_started()
    found = [p for doc in DOCS for p in problems((ROOT / doc).read_text(), doc)]
    assert not found, "\n".join(found)
    # importing the named modules neither switched x64 on nor created an array
    assert jax.config.jax_enable_x64 == x64
    assert started or not numerics._backend_started()


def test_the_checker_flags_stale_names_and_paths():
    text = """
    `eos_jax.analysis.nonexistent` and `eos_jax.recipe.configure_numerics(config)` (exists),
    `experiments.common.configure_numerics(config)` (gone), `eos_jax.recipe.default_recipe()`,
    `eos_jax.numerics.DtypePolicy.from_names`, `python -m experiments.twins` (a main: found,
    not run), `experiments.nonexistent_main`, `eos_jax.training.build`.
    ```python
    from eos_jax.training import ensemble, nonexistent_module as nm
    import eos_jax.recipe as rc
    ens = ensemble.Ensemble(members, dataset)  # exists
    rc.default_recipe(), rc.not_a_field, ens.describe(config)
    ```
    In prose `ensemble.describe()` is a method of the variable, not a module's name.
    Paths: `docs/architecture.md`, `docs/nonexistent.md`, `launch/tpu/`, `launch/nope/`,
    `--config=experiments/configs/twins_paper.py:table1`, `experiments/configs/nope.py:x`,
    `tests/test_docs.py::test_the_checker_flags_stale_names_and_paths`, `eos_jax/config.py`.
    Not repository paths: `--workdir=workdirs/run1`, `workdirs/a/summary.json`, `/tmp/x.py`,
    `<cache>/mnist1d-<key>.npz`, `W/summary.json`, `maps/step_*.npz`, `2/lr`, `m/(m-1)`,
    `~/.cache/eos_jax/mnist1d`, `experiments/`, `d/k`.
    ![fig](figures/twins_fig2.png) ![fig](figures/nope.png) [web](https://example.com/a.md)
    """
    flagged = [p.split(": ")[1] for p in problems(text, "docs/example.md")]
    assert sorted(flagged) == sorted(
        [
            "figures/nope.png",
            "docs/nonexistent.md",
            "eos_jax/config.py",
            "experiments/configs/nope.py",
            "launch/nope/",
            "eos_jax.analysis.nonexistent",
            "eos_jax.numerics.DtypePolicy.from_names",
            "eos_jax.recipe.not_a_field",
            "eos_jax.training.nonexistent_module",
            "experiments.common.configure_numerics",
            "experiments.nonexistent_main",
        ]
    ), flagged
