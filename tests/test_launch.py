"""The launch scripts' dry runs print the exact commands (no gcloud or Slurm needed)."""

import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VM = ["--name=eos", "--zone=us-central2-b", "--dry_run"]


def dry_run(script: str, *args: str) -> list[list[str]]:
    out = subprocess.run(
        [os.path.join(ROOT, "launch", script), *args], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines()]


def pinned_jax() -> str:
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        return next(line.split("==")[1].strip() for line in f if line.startswith("jax=="))


def test_tpu_create_installs_the_pinned_jax_on_every_worker():
    create, install = dry_run("tpu/create.sh", *VM, "--type=v4-32", "--repo_url=https://g/r.git")
    assert create == [
        *"gcloud compute tpus tpu-vm create eos".split(),
        "--zone=us-central2-b",
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
    ]
    assert install[:7] == [*"gcloud compute tpus tpu-vm ssh eos".split(), "--zone=us-central2-b"]
    assert "--worker=all" in install
    command = install[-1].removeprefix("--command=")
    assert "git clone https://g/r.git eos_jax" in command
    assert f"'jax[tpu]=={pinned_jax()}'" in command and "-r requirements.txt" in command


def test_tpu_run_fetch_delete():
    (run,) = dry_run(
        "tpu/run.sh", *VM, "--config=c.py", "--workdir=runs/x", "--", "--config.optimizer.lr=0.05"
    )
    assert "--worker=all" in run
    assert shlex.split(run[-1].removeprefix("--command=")) == [
        *"cd eos_jax && .venv/bin/python -m experiments.train".split(),
        "--config=c.py",
        "--workdir=runs/x",
        "--distributed_auto",
        "--config.optimizer.lr=0.05",
    ]
    (fetch,) = dry_run("tpu/fetch.sh", *VM, "--workdir=runs/x", "--dest=out")
    assert fetch == [
        *"gcloud compute tpus tpu-vm scp --recurse eos:eos_jax/runs/x out".split(),
        "--zone=us-central2-b",
        "--worker=0",
    ]
    (delete,) = dry_run("tpu/delete.sh", *VM, "--project=p")
    assert delete == [
        *"gcloud compute tpus tpu-vm delete eos".split(),
        "--zone=us-central2-b",
        "--project=p",
        "--quiet",
    ]


def test_slurm_submit_prints_the_sbatch_command():
    (cmd,) = dry_run(
        "slurm/submit.sh", "--nodes=2", "--gpus_per_node=4", "--dry_run", "--", "--workdir=/s/r"
    )
    assert cmd == [
        *"sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=4".split(),
        os.path.join(ROOT, "launch", "slurm", "train.sbatch"),
        "--workdir=/s/r",
    ]


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("tpu/run.sh", VM, "--config is required"),
        ("tpu/create.sh", ["--zone=z", "--dry_run"], "--name is required"),
        ("tpu/run.sh", [*VM, "--config=c", "--workdir=w", "--experiment=x"], "allowed: train"),
        ("tpu/delete.sh", [*VM, "--colour=red"], "unknown argument '--colour=red'"),
        ("slurm/submit.sh", ["--nodes=0", "--dry_run"], "nodes=0 must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(script, args, message):
    out = subprocess.run(
        [os.path.join(ROOT, "launch", script), *args], capture_output=True, text=True
    )
    assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1
