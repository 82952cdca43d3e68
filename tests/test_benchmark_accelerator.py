"""benchmarks/accelerator.py runs end to end here (on the CPU), and its bit columns hold
what this backend guarantees."""

import os
import subprocess
import sys

import pytest

from eos_jax import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.accelerator", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # a benchmark end to end (~25 s CPU); what it reports on the CPU is tested
# faster: reruns bit-identical (tests/test_hardening.py's audit), unrolled member 0 = one run
# (tests/test_ensemble.py)
def test_cpu_run_reports_every_variant_and_both_strategies(tmp_path):
    out = tmp_path / "accelerator.json"
    done = bench("--recipe=embedded", "--steps=2", "--k=2", f"--json_out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "device: cpu" in done.stdout
    measured = results.read_json(str(out))
    variants = {r["variant"]: r for r in measured["variants"]}
    assert list(variants) == ["deterministic", "nondeterministic", "tf32"]
    assert all(r["rerun bit-identical"] for r in variants.values())
    # --xla_gpu_deterministic_ops only acts on GPU kernels: on the CPU the bits are the same.
    assert variants["nondeterministic"]["bits as baseline"]
    ensembles = {r["strategy"]: r for r in measured["ensembles"]}
    assert ensembles["unrolled"]["member 0 bits as one run"]  # the unrolled guarantee
    assert all(r["ms/step"] > 0 and r["vs K one runs"] > 0 for r in ensembles.values())


def test_unknown_variant_is_a_one_line_error():
    done = bench("--variants=fast")
    assert done.returncode != 0
    assert "unknown variants ['fast']; allowed: deterministic, nondeterministic, tf32" in (
        done.stderr
    )
