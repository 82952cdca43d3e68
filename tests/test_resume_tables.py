"""Issue 25, case 1: a study killed mid-run and run again prints the tables of an
uninterrupted one, byte for byte (what observers carry from step to step is checkpointed
with the states: training.observers.Observer.carried)."""

import glob
import os
import signal
import subprocess
import sys
import time

import jax
import pytest

from eos_jax import recipe
from eos_jax.studies import response as study
from eos_jax.training import observers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = "experiments/configs"


def tables(workdir) -> dict[str, bytes]:
    """The study's tables: every .csv and .md file at the top of its work directory."""
    names = sorted(
        glob.glob(os.path.join(workdir, "*.csv")) + glob.glob(os.path.join(workdir, "*.md"))
    )
    assert names, f"no tables in {workdir}"
    return {os.path.basename(n): open(n, "rb").read() for n in names}


def response_config():
    """A response study of one twin pair of a small MLP on the embedded digits."""
    config = recipe.default_recipe()
    config.response = study.default_settings()
    config.update_from_flattened_dict(
        {
            "model": "mlp",
            "model_kwargs": {"hidden": (16,), "activation": "relu"},
            "train_subset": 256,
            "batch_size": 64,
            "num_steps": 12,
            "log_every_steps": 4,
            "eval_every_steps": 4,
            "checkpoint_every_steps": 3,
            "quiet": True,
            "response.activations": ("relu",),
            "response.sources": ("update_k",),
            "response.lrs": (0.1,),
            "response.seeds": (0,),
            "response.switches_size": 32,
        }
    )
    return config


# ~25 s CPU: make test-slow. The records under the tables resume bit for bit in make test
# (tests/test_response.py and tests/test_observer_resume.py).
@pytest.mark.slow
def test_a_response_study_interrupted_after_a_checkpoint_prints_the_same_tables(
    tmp_path, monkeypatch
):
    """In process (fast): Ctrl-C right after the checkpoint of step 6, then the same study
    again with new observers (nothing in memory): the tables of the 12 uninterrupted steps.
    The compiled programs are kept between the three (the study drops them after each run,
    for large models: they are recompiled to the same bits)."""
    monkeypatch.setattr(jax, "clear_caches", lambda: None)
    with jax.enable_x64(True):
        study.execute(response_config(), str(tmp_path / "whole"))
        save = observers.Checkpoint.__call__

        def interrupted(self, run):
            save(self, run)
            if run.step == 6:
                raise KeyboardInterrupt

        monkeypatch.setattr(observers.Checkpoint, "__call__", interrupted)
        with pytest.raises(KeyboardInterrupt):
            study.execute(response_config(), str(tmp_path / "split"))
        monkeypatch.setattr(observers.Checkpoint, "__call__", save)
        study.execute(response_config(), str(tmp_path / "split"))
    assert tables(tmp_path / "split") == tables(tmp_path / "whole")


TINY_TRAINING = ("--config.quiet=True", "--config.batch_size=32")
# Each main at a small size, with checkpoints every few steps (theory has none: a killed
# theory study computes everything again).
MAINS = {
    "response": (
        "--config.train_subset=256",
        "--config.num_steps=40",
        "--config.checkpoint_every_steps=5",
        "--config.eval_every_steps=10",
        "--config.log_every_steps=10",
        "--config.model_kwargs.widths=(4,8,8)",
        "--config.response.activations=('relu',)",
        "--config.response.sources=('update_k',)",
        "--config.response.lrs=(0.1,)",
        "--config.response.seeds=(0,)",
        "--config.response.switches_size=32",
        *TINY_TRAINING,
    ),
    "eos": (
        f"--config={CONFIGS}/eos_digits.py:plateau",
        "--config.eos.runs=('optimizer.lr=0.05 num_steps=40',)",
        "--config.eos.sharpness_every_steps=5",
        "--config.eos.size=128",
        "--config.eos.chunk_size=128",
        "--config.checkpoint_every_steps=5",
        "--config.quiet=True",
    ),
    "twins": (
        f"--config={CONFIGS}/twins_embedded.py:table1",
        "--config.num_epochs=4",
        "--config.checkpoint_every_steps=5",
        "--config.model_kwargs.widths=(4,8,8)",
        *TINY_TRAINING,
    ),
    "theory": (f"--config={CONFIGS}/theory_fig1.py", "--config.quiet=True"),
}


def command(module, workdir, args):
    return [sys.executable, "-m", f"experiments.{module}", f"--workdir={workdir}", *args]


def checkpointed(workdir) -> bool:
    return bool(glob.glob(os.path.join(workdir, "*", "checkpoints", "[0-9]*")))


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(MAINS))
def test_a_killed_study_main_prints_the_tables_of_an_uninterrupted_one(tmp_path, module):
    """Each study main killed with SIGKILL once a checkpoint exists (theory: as soon as its
    work directory does), then run again: its tables are those of an uninterrupted run."""
    args = MAINS[module]
    whole = subprocess.run(
        command(module, tmp_path / "whole", args), cwd=ROOT, capture_output=True, timeout=600
    )
    assert whole.returncode == 0, whole.stderr.decode()
    split = tmp_path / "split"
    killed = subprocess.Popen(
        command(module, split, args),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ready = checkpointed if module != "theory" else os.path.isdir
    deadline = time.time() + 300
    while not ready(split) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not os.path.exists(split / "summary.json"), "finished before it was killed"
    again = subprocess.run(command(module, split, args), cwd=ROOT, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr.decode()
    assert tables(split) == tables(tmp_path / "whole")


def demo_folder(parent) -> str:
    """The one timestamped run folder the demo made under its --workdir."""
    (folder,) = glob.glob(os.path.join(parent, "2*-*"))
    return folder


@pytest.mark.slow
def test_a_killed_demo_resumes_its_folder_and_prints_the_tables_of_an_uninterrupted_one(
    tmp_path,
):
    """`make demo`'s main killed once its first ensemble has a checkpoint, then run again:
    it resumes the same timestamped folder (no second one) and writes the tables of an
    uninterrupted demo (about 10 minutes on 2 cores: two demos and a half)."""
    whole = subprocess.run(command("demo", tmp_path / "whole", ()), cwd=ROOT, capture_output=True)
    assert whole.returncode == 0, whole.stderr.decode()
    split = tmp_path / "split"
    killed = subprocess.Popen(
        command("demo", split, ()),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while not glob.glob(str(split / "2*-*" / "*" / "checkpoints" / "[0-9]*")):
        assert killed.poll() is None and time.time() < deadline, "no checkpoint to kill after"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    again = subprocess.run(command("demo", split, ()), cwd=ROOT, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()
    assert tables(demo_folder(split)) == tables(demo_folder(tmp_path / "whole"))
