"""Refactors keep the bits: the recipes' final parameter hashes recorded before the one-trainer
redesign must come out again, on the machine and numerics they were recorded with."""

import json
import os
import subprocess
import sys

import pytest

from eos_jax import numerics, results
from eos_jax.training.summary import RunSummary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = json.load(open(os.path.join(ROOT, "tests", "data", "bits_preserved.json")))


def run(module: str, workdir, *args) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, *args, f"--workdir={workdir}", "--config.quiet=True"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr


# What this process can tell before a run: the rest (flags, x64, precision) the mains set.
MACHINE_KEYS = ("backend", "cpu", "cpu_threads", "versions")


def same_numerics_or_skip(workdir=None) -> None:
    """Hashes are only comparable on the CPU, threads, flags and versions they came from:
    without a workdir, the machine's part (checked before a run, so that another machine
    skips without training); with one, the run's whole fingerprint."""
    if workdir is None:
        now = numerics.fingerprint(numerics.DtypePolicy("fp32", "fp32"))
        recorded = {k: REFERENCE["recorded_on"][k] for k in MACHINE_KEYS}
    else:
        now = results.read_json(os.path.join(workdir, "fingerprint.json"))
        recorded = REFERENCE["recorded_on"]
    changed = [k for k in recorded if now.get(k) != recorded[k]]
    if changed:
        pytest.skip(f"recorded on other numerics (differs in {', '.join(changed)})")


def test_default_recipe_keeps_its_bits(tmp_path):
    same_numerics_or_skip()
    run("experiments.train", tmp_path, "--config=experiments/configs/default.py")
    same_numerics_or_skip(tmp_path)
    assert RunSummary.read(str(tmp_path)).members[0].params_hash == REFERENCE["default_recipe"]


def test_twins_table1_keeps_its_bits(tmp_path):
    same_numerics_or_skip()
    run(
        "experiments.twins",
        tmp_path,
        "--config=experiments/configs/twins_embedded.py:table1",
        "--config.twins.seeds=(1,)",
        "--config.twins.ks=(1,3)",
        "--config.num_epochs=5",
        "--config.optimizer.decay_epochs=(3,)",
    )
    same_numerics_or_skip(tmp_path)
    hashes = RunSummary.read(os.path.join(tmp_path, "seed_1")).column("params_hash")
    assert hashes == REFERENCE["table1_seed1_k1_k3_5_epochs"]
