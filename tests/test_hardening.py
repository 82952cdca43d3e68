"""Issue 14's hardening cases, as a new user meets them: each is one line on stderr starting
"error:" with a non-zero exit (or works), and leaves nothing half-written."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import pytest
from absl import app

from eos_jax import recipe, results
from eos_jax.studies import eos as eos_study
from eos_jax.studies import response as response_study
from eos_jax.studies import theory
from eos_jax.training import build, observers, trainer
from eos_jax.training.checkpoint import Checkpointer, CheckpointError
from eos_jax.training.ensemble import Ensemble
from eos_jax.training.sources import Member
from experiments import common
from experiments.configs import eos_digits, response_mnist1d, theory_fig1, twins_mnist1d_resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--config.model_kwargs.widths=(4,8)", "--config.batch_size=32")
CONFIGS = "experiments/configs"


def command(module, *args):
    return [sys.executable, "-m", f"experiments.{module}", *args]


def run(module, *args, timeout=120):
    return subprocess.run(
        command(module, *args), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def assert_one_line_error(out, *named, status=common.EXIT_ERROR):
    assert out.returncode == status, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    for text in named:
        assert text in out.stderr, out.stderr


def record_keys(workdir):
    return [(r["step"], r["member"], r["kind"]) for r in trainer.read_metrics(str(workdir))]


def tiny_config():
    config = recipe.default_recipe()
    config.update_from_flattened_dict(
        {
            "num_steps": 4,
            "batch_size": 32,
            "eval_every_steps": 2,
            "log_every_steps": 2,
            "checkpoint_every_steps": 2,
            "model_kwargs": {"widths": (4, 8)},
            "quiet": True,
        }
    )
    return config


# 1. A rerun after a kill before the first checkpoint starts from an empty metrics.jsonl.


class AtStart(observers.Observer):
    """Writes a record at step 0 and every 2 steps, like the eos study's sharpness."""

    at_start, every_steps, kind = True, 2, "probe"

    def __call__(self, run):
        self.write(run, [{"value": 1.0}] * len(run.ensemble))


def train_with_a_step_0_observer(config, workdir, stop_at_step=None):
    member = Member("recipe", config)
    ensemble = Ensemble([member], build.dataset(config), strategy="unrolled")
    return trainer.Trainer(ensemble, config, str(workdir), [AtStart()]).run(stop_at_step)


def test_a_rerun_without_checkpoint_does_not_repeat_the_step_0_records(tmp_path):
    config = tiny_config()
    train_with_a_step_0_observer(config, tmp_path)
    once = record_keys(tmp_path)
    assert (0, 0, "probe") in once
    # What a kill before the first checkpoint leaves: records, no checkpoint, no summary.
    os.remove(tmp_path / results.SUMMARY)
    for name in os.listdir(tmp_path / "checkpoints"):
        if name != "hashes.json":
            shutil.rmtree(tmp_path / "checkpoints" / name)
    train_with_a_step_0_observer(config, tmp_path)
    again = record_keys(tmp_path)
    assert len(again) == len(set(again)), "a record appears twice"
    assert sorted(again) == sorted(once)


# 2. A config meant for another main: one line naming the section and the configs to use.


def test_a_config_for_another_main_is_one_line(tmp_path):
    config = f"--config={CONFIGS}/twins_mnist1d.py:headline"
    out = run("eos", config, f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(out, "config.eos", "experiments.eos takes", "eos_digits.py")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize(
    "section, default, config, named",
    [
        ("twins", "twins_embedded.py", "eos_digits.py", "twins_mnist1d.py"),
        ("response", "response_mnist1d.py", "twins_mnist1d.py", "response_mnist1d.py"),
        ("experiment", "theory_fig1.py", "default.py", "theory_fig4_left.py"),
        ("model", "default.py", "theory_fig1.py", "mnist1d.py"),
    ],
)
def test_each_main_names_the_section_it_needs(monkeypatch, section, default, config, named):
    """What experiments.{twins, response, theory, train} check (their define_config)."""
    monkeypatch.setitem(common._config_defaults, "config", f"{CONFIGS}/{default}")
    monkeypatch.setitem(common._config_sections, "config", section)
    with pytest.raises(app.UsageError) as caught:
        common.check_config(f"{CONFIGS}/{config}", ["main", "--config.x=1"])
    assert f"has no config.{section}" in str(caught.value) and named in str(caught.value)


def test_the_configs_meant_for_a_main_are_those_with_its_section():
    eos = common.configs_with("eos", CONFIGS)
    assert {"eos_cifar5k.py", "eos_digits.py"} <= set(eos)
    assert not [name for name in eos if not name.startswith("eos_")]
    theory = common.configs_with("experiment", CONFIGS)
    assert "theory_fig1.py" in theory and "theory_base.py" not in theory
    assert "default.py" in common.configs_with("model", CONFIGS)


# 3. ':x' on a config whose get_config() takes no argument, and a helper that is no config.


@pytest.mark.parametrize(
    "path, named",
    [
        ("mnist1d_resnet.py:x", "takes no ':x' argument"),
        ("theory_fig1.py:x", "takes no ':x' argument"),
        # an argument get_config() refuses used to end in config_flags' traceback
        ("response_mnist1d.py:x", "unknown experiment 'x'; known: full, forecast"),
        ("default.py:x", "takes no ':x' argument"),
        ("theory_base.py", "is not a config file: it defines no get_config()"),
    ],
)
def test_a_config_that_cannot_be_called_so_is_a_usage_error(path, named):
    with pytest.raises(app.UsageError) as caught:
        common.check_config(f"{CONFIGS}/{path}", ["main"])
    assert named in str(caught.value)


@pytest.mark.parametrize(
    "module, path, named",
    [
        ("response", "response_mnist1d.py:x", ["unknown experiment 'x'; known: full, forecast"]),
        ("train", "mnist1d_resnet.py:x", ["takes no ':x' argument"]),
        ("theory", "theory_base.py", ["theory_base.py", "no get_config()", "theory_fig1.py"]),
    ],
)
def test_an_unusable_config_file_is_one_line(tmp_path, module, path, named):
    out = run(module, f"--config={CONFIGS}/{path}", f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(out, *named)
    assert not os.path.exists(tmp_path / "run")


# 4. Ctrl-C: one line with the step, exit 130, and the same command resumes.


def test_ctrl_c_says_where_and_the_same_command_resumes(tmp_path):
    workdir = tmp_path / "run"
    args = command(
        "train",
        f"--workdir={workdir}",
        "--config.num_steps=12",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=12",
        "--config.checkpoint_every_steps=1",  # slow steps: the signal comes mid-run
        "--config.quiet=True",
        *TINY,
    )
    # A shell running the tests in the background may have SIGINT ignored, and its children
    # inherit that: the main starts with SIGINT at its default (kept across exec).
    default_sigint = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    default_sigint += "os.execv(sys.argv[1], sys.argv[1:])"
    process = subprocess.Popen(
        [sys.executable, "-c", default_sigint, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not any(step >= 2 for step, _, _ in record_keys(workdir)) and time.time() < deadline:
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == common.EXIT_INTERRUPTED, stderr
    assert stderr.startswith("error: interrupted at step ") and stderr.count("\n") == 1, stderr
    assert "; run the same command to resume" in stderr
    assert not results.is_finished(str(workdir))
    assert not [n for n in os.listdir(workdir / "checkpoints") if "tmp" in n]
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert results.is_finished(str(workdir))
    keys = record_keys(workdir)
    assert len(keys) == len(set(keys)) and (12, 0, "eval") in keys


# 5. A failed or killed audit does not block its work directory.


def test_a_failed_or_killed_audit_can_be_run_again(tmp_path):
    workdir = tmp_path / "audit"
    # What an audit leaves when its first run refuses a bad override (e.g. lr=abc): its
    # released lock and its settings, no run folder.
    workdir.mkdir()
    (workdir / results.LOCK).write_text("12345\n")
    results.write_json(str(workdir / "audit.json"), {"overrides": ["--config.optimizer.lr=abc"]})
    args = command("audit", f"--workdir={workdir}", "--steps=2", "--variants=", *TINY)
    killed = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.time() + 60
    while not results.is_finished(str(workdir / "reference")) and time.time() < deadline:
        assert killed.poll() is None, killed.communicate()[1]
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # the audit and the run it started
    killed.wait()
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "audit: reference finished before this rerun: kept" in out.stdout
    assert "bit-identical across fresh processes: YES" in out.stdout


# 6. A full disk: one line, and no temporary checkpoint folder left behind.


def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_leaves_no_tmp(tmp_path, capfd):
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    tmp = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234"

    def save(step, args, force):  # what orbax does on a full disk: a tmp folder, noise
        (tmp / "default").mkdir(parents=True)
        for _ in range(300):
            os.write(2, b"E1205 orbax: Traceback (most recent call last): ...\n")
        raise ValueError(
            f'RESOURCE_EXHAUSTED: Error writing "x" in {tmp}: No space left on device '
            "[os_error_code='28']"
        )

    checkpointer._manager.save = save
    with pytest.raises(CheckpointError, match="step 3 .*: no space left on device") as caught:
        checkpointer.save(3, {"w": 1.0})
    assert not tmp.exists() and checkpointer.latest_step() is None
    captured = capfd.readouterr()
    assert captured.err == "" and "\n" not in str(caught.value)
    assert "checkpoint" in results.first_line(caught.value)


def test_an_os_error_enospc_is_named_too(tmp_path, capfd):
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))

    def save(step, args, force):
        (tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp").mkdir()
        raise OSError(errno.ENOSPC, "disk quota")

    checkpointer._manager.save = save
    with pytest.raises(CheckpointError, match="no space left on device"):
        checkpointer.save(5, {"w": 1.0})
    assert os.listdir(tmp_path / "checkpoints") == ["hashes.json"]
    assert capfd.readouterr().err == ""


def test_a_successful_save_passes_its_output_through(tmp_path, capfd):
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    save = checkpointer._manager.save

    def chatty(*args, **kwargs):
        os.write(2, b"orbax says hello\n")
        return save(*args, **kwargs)

    checkpointer._manager.save = chatty
    checkpointer.save(1, {"w": 1.0})
    assert checkpointer.latest_step() == 1
    assert capfd.readouterr().err == "orbax says hello\n"


# 7. The divergence error starts its own line after the progress bar.


def test_the_divergence_error_is_not_glued_to_the_progress_bar(tmp_path, capfd):
    config = tiny_config()
    config.update_from_flattened_dict({"optimizer.lr": 1e6, "num_steps": 5, "quiet": False})
    try:
        trainer.train_and_evaluate(config, str(tmp_path))
    except trainer.TrainingDiverged:  # where common.entry_point prints the error line
        err = capfd.readouterr().err
    else:
        pytest.fail("no divergence")
    assert "step/s" in err and err.endswith("\n"), repr(err)  # the error line starts afresh


# 8. experiments.theory shows progress.


def test_theory_shows_progress(tmp_path):
    out = run(
        "theory",
        f"--config={CONFIGS}/theory_fig1.py",
        f"--workdir={tmp_path / 'run'}",
        "--config.dts=(0.2,0.4,0.8)",
    )
    assert out.returncode == 0, out.stderr
    assert "heat" in out.stderr and "3/3" in out.stderr, out.stderr
    assert json.load(open(tmp_path / "run" / results.SUMMARY))["experiment"] == "heat"


def test_theory_progress_is_off_when_quiet():
    config = ml_collections.ConfigDict({"experiment": "heat", "quiet": True})
    assert theory._progress(config, [1, 2]).disable
    config.quiet = False
    assert not theory._progress(config, [1, 2]).disable


# Issue 25: nothing silently changed or hidden.


def test_the_last_of_a_repeated_config_flag_wins_for_tuples_too():
    """ml_collections joins a repeated tuple flag's values (a scalar takes the last)."""
    argv = ["main", "--config.response.lrs=(0.1,)", "--workdir=w", "--config.response.lrs"]
    argv += ["(0.2,)", "--config.quiet", "--noconfig.quiet", "--config.response.lrs=(0.3,)"]
    kept = common.last_overrides(argv, "config")
    assert kept == ["main", "--workdir=w", "--noconfig.quiet", "--config.response.lrs=(0.3,)"]


def test_a_repeated_tuple_flag_is_replaced_in_every_main(tmp_path):
    out = run(
        "response",
        f"--workdir={tmp_path / 'run'}",
        "--config.response.seeds=(0, 1)",
        "--config.response.seeds=(-1,)",
    )
    assert_one_line_error(out, "response.seeds=(-1,)", "integers >= 0")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("activations", ("tanhx",), ["response.activations=('tanhx',)", "relu, tanh, swish, gelu"]),
        ("lrs", ("a",), ["response.lrs=('a',)", "'a' is not one", "numbers > 0"]),
        ("seeds", (-1,), ["response.seeds=(-1,)", "integers >= 0"]),
        ("seeds", (0, 1, 0), ["response.seeds=(0, 1, 0) (a repeat)"]),
        ("sources", (), ["response.sources=() (empty)", "update_k, ulp_init"]),
    ],
)
def test_a_response_error_names_the_field_the_value_and_what_is_allowed(field, value, named):
    config = response_mnist1d.get_config()
    config.response[field] = value
    with pytest.raises(ValueError) as caught:
        response_study.plan(config)
    for text in named:
        assert text in str(caught.value)


def test_the_switches_size_error_names_its_field(tmp_path):
    config = response_mnist1d.get_config()
    config.update_from_flattened_dict({"response.switches_size": 0, "train_subset": 256})
    with pytest.raises(ValueError, match=r"response.switches_size=0 must be an integer in \[1, "):
        response_study.execute(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_the_held_out_split_cannot_be_turned_off_where_the_verdict_needs_it(tmp_path):
    config = twins_mnist1d_resnet.get_config()
    config.dataset_kwargs.heldout_size = 0
    with pytest.raises(ValueError, match=r"config.dataset_kwargs.heldout_size=0: .* needs the"):
        recipe.validate(config)
    out = run(
        "twins",
        f"--config={CONFIGS}/twins_mnist1d_resnet.py",
        "--config.dataset_kwargs.heldout_size=-1",
        f"--workdir={tmp_path / 'run'}",
    )
    assert_one_line_error(out, "dataset_kwargs.heldout_size=-1 must be 0 (no held-out split) or")
    assert not os.path.exists(tmp_path / "run")


def test_a_diverged_run_is_a_row_that_says_so_and_the_others_keep_their_columns():
    """The eos table of a diverged run and a healthy one (issue 25, case 2)."""
    diverged = {"name": "run00", "lr": 50.0, "max_sharpness": 3.0, "phase": "diverged"}
    healthy = {"name": "run01", "lr": 0.05, "steps": 20, "observed_plateau": 38.0}
    healthy.update(initial_sharpness=2.0, final_train_loss=0.1, phase="below the edge")
    shown = results.shown_columns([diverged, healthy], eos_study.SHOWN)
    assert list(shown[1]) == [k for k in eos_study.SHOWN if k in healthy]
    assert shown[0]["phase"] == "diverged" and shown[0]["observed_plateau"] == ""
    lines = results.markdown_table(shown).splitlines()
    assert lines[0].count("|") == lines[2].count("|") == lines[3].count("|") == len(healthy) + 1
    # a table whose first row has fewer columns keeps the others' too
    assert "observed_plateau" in results.markdown_table([diverged, healthy]).splitlines()[0]


# Issue 25, case 6 in every main: an error names the field as --config.X spells it, the bad
# value and what is allowed (studies check their settings where they enter, before the
# observers or the library see them; nothing is written).


def _train_config():
    return tiny_config()


def _eos_config():
    config = eos_digits.get_config("plateau")
    config.update_from_flattened_dict(
        {"eos.runs": ("optimizer.lr=0.05 num_steps=2",), "train_subset": 64, "batch_size": 64}
    )
    return config


def _response_config():
    config = response_mnist1d.get_config()
    config.update_from_flattened_dict({"response.seeds": (0,), "response.lrs": (0.1,)})
    return config


def _check_train(config, workdir):
    recipe.validate_numerics(config)  # what experiments.train checks before anything runs
    recipe.validate(config)
    build.check_names(config)


PROBED = {  # main: (its config, what the main runs first with it)
    "train": (_train_config, _check_train),
    "eos": (_eos_config, eos_study.execute),
    "response": (_response_config, lambda config, workdir: response_study.plan(config)),
    "theory": (theory_fig1.get_config, lambda config, workdir: theory.validate(config)),
}


@pytest.mark.parametrize(
    "main, field, value, named",
    [
        ("train", "optimizer.k", 0, ["config.optimizer.k=0 must be an integer >= 1"]),
        ("train", "optimizer.momentum", 2.0, ["config.optimizer.momentum=2.0", "[0, 1)"]),
        ("train", "optimizer.arithmetic", "x", ["optimizer.arithmetic='x'", "as_written, torch"]),
        ("train", "optimizer.decay_epochs", (-1,), ["optimizer.decay_epochs=(-1,)", "epochs > 0"]),
        ("train", "optimizer.decay_factor", -1.0, ["optimizer.decay_factor=-1.0", "number > 0"]),
        ("train", "seeds.subset", -1, ["config.seeds.subset=-1 must be an integer >= 0"]),
        ("train", "model", "x", ["config.model='x'; known: ", "small_cnn"]),
        ("train", "dataset", "x", ["config.dataset='x'; known: ", "mnist1d"]),
        ("train", "loss", "x", ["config.loss='x'; allowed: cross_entropy, mse"]),
        ("train", "numerics.param_dtype", "x", ["numerics.param_dtype='x'", "bf16, fp32, fp64"]),
        ("train", "numerics.matmul_precision", "x", ["matmul_precision='x'", "high, highest"]),
        ("train", "numerics.cpu_threads", 0, ["numerics.cpu_threads=0", "None (all) or"]),
        ("eos", "eos.experiment", "x", ["eos.experiment='x'; known: plateau, weight_decay"]),
        ("eos", "eos.k", 0, ["eos.k=0 must be an integer >= 1"]),
        ("eos", "eos.sharpness_every_steps", 0, ["eos.sharpness_every_steps=0", ">= 1"]),
        ("eos", "eos.tol", 2.0, ["eos.tol=2.0 must be a number in (0, 1)"]),
        ("eos", "eos.max_iters", 1, ["eos.max_iters=1 must be an integer >= 2"]),
        ("eos", "eos.chunk_size", 0, ["eos.chunk_size=0 must be an integer >= 1"]),
        ("eos", "eos.size", 65, ["eos.size=65 must be an integer in [1, 64]"]),
        ("eos", "eos.regions_size", 0, ["eos.regions_size=0 must be an integer >= 1"]),
        ("eos", "eos.regions_threshold", 0.0, ["eos.regions_threshold=0.0", "number > 0"]),
        ("response", "response.ks", (0, 1), ["response.ks=(0, 1)", "integers >= 1"]),
        ("theory", "experiment", "x", ["config.experiment='x'; known: heat, linear_pde"]),
    ],
)
def test_every_main_names_the_field_the_value_and_what_is_allowed(
    tmp_path, main, field, value, named
):
    make, check = PROBED[main]
    config = make()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError) as caught:
        check(config, str(tmp_path / "run"))
    for text in named:
        assert text in results.first_line(caught.value)
    assert not os.path.exists(tmp_path / "run")


def test_a_bad_setting_is_one_line_naming_its_field(tmp_path):
    """The main's side of the above (one representative: a process costs seconds)."""
    out = run("train", f"--workdir={tmp_path / 'run'}", "--config.seeds.subset=-1")
    assert_one_line_error(out, "config.seeds.subset=-1 must be an integer >= 0")
    assert not os.path.exists(tmp_path / "run")


def test_the_demo_refuses_a_file_as_its_workdir_in_one_line(tmp_path):
    """Issue 25, case 4: checked before anything (experiments.common.entry_point), so before
    the compilation cache is set up under it."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out = run("demo", f"--workdir={a_file}")
    assert_one_line_error(out, f"workdir '{a_file}' is not a directory")
