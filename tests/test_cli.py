"""The mains as a new user meets them: mistakes are one line on stderr, with exit statuses
that tell bad input (1) from divergence (3)."""

import os
import signal
import subprocess
import sys

import pytest

from experiments import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--config.model_kwargs.widths=(4,8)", "--config.batch_size=32", "--config.quiet=True")


def run(module, *args):
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def assert_one_line_error(out, *named):
    assert out.returncode == common.EXIT_ERROR, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    for text in named:
        assert text in out.stderr, out.stderr


@pytest.mark.parametrize(
    "module, args, named",
    [
        (
            "train",
            ["--config.optimizer.lrr=0.1"],
            ["unknown config field 'optimizer.lrr' (did you mean 'optimizer.lr'?)"],
        ),
        (
            "train",
            ["--config=experiments/configs/default.py", "--config.optimizr.lr=0.1"],
            ["'optimizr.lr' (did you mean 'optimizer.lr'?)"],
        ),
        ("twins", ["--config.twins.seedz=1"], ["'twins.seedz' (did you mean 'twins.seeds'?)"]),
        ("train", ["--config=experiments/configs/nonexistent.py"], ["nonexistent.py"]),
        ("train", ["--config.optimizer.lr=abc"], ["optimizer.lr", "abc"]),
        ("train", ["--workdirr=x"], ["workdirr"]),
        ("train", ["stray"], ["unexpected arguments: ['stray']"]),
        ("eos", ["stray"], ["unexpected arguments: ['stray']"]),
        ("theory", ["a", "b"], ["unexpected arguments: ['a', 'b']"]),
        ("audit", ["stray"], ["unexpected arguments: ['stray']"]),
    ],
)
def test_bad_flags_are_one_line(tmp_path, module, args, named):
    out = run(module, f"--workdir={tmp_path / 'run'}", *args)
    assert_one_line_error(out, *named)
    assert not os.path.exists(tmp_path / "run")


def test_audit_without_workdir_is_one_line():
    assert_one_line_error(run("audit"), "--workdir")


def test_unusable_workdirs_are_one_line(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    steps = "--config.num_steps=2"
    assert_one_line_error(run("train", f"--workdir={a_file}", steps, *TINY), str(a_file))
    inside = a_file / "run"
    assert_one_line_error(run("train", f"--workdir={inside}", steps, *TINY), str(inside))


def test_a_workdir_in_use_is_refused_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "run")
    hold = "import sys, time; from eos_jax import results; results.lock_workdir(sys.argv[1]);"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold + "print('locked', flush=True); time.sleep(120)", workdir],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = run("train", f"--workdir={workdir}", "--config.num_steps=2", *TINY)
        assert_one_line_error(out, workdir, f"pid {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_divergence_has_its_own_exit_status(tmp_path):
    out = run(
        "train", f"--workdir={tmp_path}", "--config.optimizer.lr=1e6", "--config.num_steps=5", *TINY
    )
    assert out.returncode == common.EXIT_DIVERGED, out.stderr
    assert "not finite" in out.stderr or "nan" in out.stderr
    assert out.stderr.count("\n") == 1 and os.path.exists(tmp_path / "diverged.json")
