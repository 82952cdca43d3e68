"""Every command the README gives can be followed, in order, on a fresh clone: its main
exists, its config loads with its experiment and overrides, the recipe it makes passes
validation (names included), and no two commands write to the same work directory (the
second would be refused: the folder holds another config's run)."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re
import shlex

import pytest

from eos_jax import recipe
from eos_jax.training import build
from experiments import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
COMMAND = re.compile(r"^(?:\.venv/bin/)?python -m (experiments\.\w+)(.*)$")


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """(main module, its arguments) of each `python -m experiments.<main>` line of the
    fenced code blocks, backslash continuations joined."""
    found = []
    for block in FENCED.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            match = COMMAND.match(line.strip())
            if match:
                found.append((match[1], shlex.split(match[2].split("#")[0])))
    return found


COMMANDS = readme_commands((ROOT / "README.md").read_text())


def flag(args: list[str], name: str) -> str | None:
    """The value of --name=VALUE in args (the last one), or None."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def test_the_readme_gives_commands_for_every_main():
    mains = {main for main, _ in COMMANDS}
    assert {"experiments.train", "experiments.twins", "experiments.eos"} <= mains
    assert {"experiments.theory", "experiments.response", "experiments.audit"} <= mains


def test_no_two_readme_commands_share_a_work_directory():
    workdirs = [flag(args, "workdir") for _, args in COMMANDS]
    assert None not in workdirs, "a README command without --workdir"
    repeated = sorted({w for w in workdirs if workdirs.count(w) > 1})
    assert not repeated, f"README commands share work directories: {repeated}"


@pytest.mark.parametrize(
    "main, args", COMMANDS, ids=[f"{m.split('.')[1]}:{flag(a, 'workdir')}" for m, a in COMMANDS]
)
def test_each_readme_command_loads_and_validates(main, args):
    """The main's module exists; its config (the README's, else the main's default) loads,
    every --config.* override names a field and applies; a recipe passes validation."""
    assert importlib.util.find_spec(main) is not None, main
    path = flag(args, "config")
    if path is None:
        return  # the main's own default config (tests/test_cli.py loads those)
    overrides = [a for a in args if a.startswith("--config.")]
    config = common.check_config(path, ["main", *overrides])
    for override in overrides:
        field, value = override.removeprefix("--config.").split("=", 1)
        config.update_from_flattened_dict({field: _literal(value)})
    if "optimizer" in config:  # a training recipe (theory configs are not)
        recipe.validate(config)
        build.check_names(config)


def _literal(text: str):
    """A flag value as absl's config override reads it: a Python literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def test_the_command_parser_reads_continuations_and_ignores_prose():
    text = (
        "Run `python -m experiments.eos --workdir=w` in prose.\n"
        "```bash\n"
        ".venv/bin/python -m experiments.train --config=a.py \\\n"
        "    --workdir=workdirs/x --config.optimizer.lr=0.05  # a comment\n"
        "make demo\n"
        "```\n"
    )
    assert readme_commands(text) == [
        (
            "experiments.train",
            ["--config=a.py", "--workdir=workdirs/x", "--config.optimizer.lr=0.05"],
        )
    ]
