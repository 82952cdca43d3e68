"""What every experiment main shares: flag parsing, one-line errors, exit statuses.

A main is `@entry_point def main(argv)` started by `start(main)`, with its recipe flag from
`define_config(...)`. Exit statuses, the same for every main, so that sweeps can tell them
apart:

  0  finished (or stopped at --stop_at_step, to be resumed)
  1  error that the user can fix: bad flags, config file or values, data, work directory
     (finished, locked by another process, not writable) or a damaged checkpoint; one line
     on stderr starting "error:". A bug also exits 1, but with a Python traceback.
  2  experiments.audit only: the runs were not bit-identical
  3  training diverged (a loss or weight not finite); the run stays unfinished and
     diverged.json in its work directory says where
  130  interrupted (Ctrl-C): one line saying at which step; the same command resumes
"""

from __future__ import annotations

import ast
import difflib
import errno
import functools
import glob
import os
import re
import sys
import traceback

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from eos_jax import distributed, numerics, results
from eos_jax.training import checkpoint, trainer

EXIT_ERROR = 1
EXIT_NOT_REPRODUCIBLE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

# Failures a user can cause and fix; anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (
    ValueError,  # bad config values, unknown names (numerics.NumericsError included)
    FileNotFoundError,  # e.g. a dataset that is not prepared
    app.UsageError,
    results.WorkdirError,
    checkpoint.CheckpointError,
    trainer.TrainingDiverged,
)

# Several processes as one run (eos_jax.distributed): flags of the mains that support it.
_distributed_flags: dict = {}


def define_distributed_flags() -> None:
    """--coordinator_address, --num_processes, --process_id, --distributed_auto and
    --heartbeat_timeout_s, read by join_distributed()."""
    _distributed_flags.update(
        coordinator=flags.DEFINE_string(
            "coordinator_address", None, "host:port of process 0, for a multi-process run."
        ),
        num_processes=flags.DEFINE_integer("num_processes", None, "Processes in the run."),
        process_id=flags.DEFINE_integer("process_id", None, "This process's index in [0, n)."),
        auto=flags.DEFINE_bool(
            "distributed_auto", False, "Join the cluster JAX detects (Cloud TPU, Slurm, MPI)."
        ),
        heartbeat=flags.DEFINE_integer(
            "heartbeat_timeout_s", 60, "A process silent this long ends the run with an error."
        ),
    )


def join_distributed() -> bool:
    """distributed.initialize from the flags; call right after configuring numerics (XLA
    flags and threads must be set before the runtime starts the backend)."""
    f = {k: v.value for k, v in _distributed_flags.items()}
    return distributed.initialize(
        f["coordinator"],
        f["num_processes"],
        f["process_id"],
        auto=f["auto"],
        heartbeat_timeout_s=f["heartbeat"],
    )


# Config file flags defined by define_config -> their default file.
_config_defaults: dict[str, str] = {}
# ... -> the field the main reads its settings from, where given.
_config_sections: dict[str, str] = {}


def define_config(default: str, help_string: str, name: str = "config", section: str | None = None):
    """config_flags.DEFINE_config_file whose default file is loaded while start() parses flags,
    not at import (where a misspelt --config.* override would be a traceback).

    section: the field this main needs (e.g. 'eos'); a config without it (one meant for
    another main) is refused in one line, before anything runs, naming the configs beside
    the default that have it."""
    _config_defaults[name] = default
    if section is not None:
        _config_sections[name] = section
    return config_flags.DEFINE_config_file(name, None, f"{help_string} Default: {default}")


def _main_name() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0])


def _get_config_arguments(file: str) -> tuple[int, int] | None:
    """(fewest, most) positional arguments the file's top-level get_config() takes, read
    from its source without running it; None when the file has no get_config at all. A
    get_config bound otherwise (imported, assigned) or an unreadable file gives (0, large):
    the parser's own error tells then."""
    unknown = (0, 1 << 16)
    try:
        with open(file) as f:
            tree = ast.parse(f.read(), file)
    except (OSError, SyntaxError, ValueError):
        return unknown
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "get_config":
            positional = len(node.args.posonlyargs) + len(node.args.args)
            most = 1 << 16 if node.args.vararg else positional
            return positional - len(node.args.defaults), most
        bound = getattr(node, "targets", None) or [getattr(node, "target", None)]
        names = [t.id for t in bound if isinstance(t, ast.Name)]
        names += [a.asname or a.name for a in getattr(node, "names", [])]
        if "get_config" in names:
            return unknown
    return None


def configs_with(section: str, folder: str) -> list[str]:
    """The config files in folder whose config (with get_config's default argument, if any)
    has the field `section`: those meant for a main that needs it."""
    found = []
    for file in sorted(glob.glob(os.path.join(folder, "*.py"))):
        arguments = _get_config_arguments(file)
        if arguments is None or arguments[0] > 0:
            continue
        try:
            config = ConfigFileFlagParser("candidate").parse(file)
        except Exception:  # a broken config is simply not listed
            continue
        if isinstance(config, ml_collections.ConfigDict) and section in config:
            found.append(os.path.basename(file))
    return found


def _meant_for(name: str) -> str:
    """'experiments.eos takes eos_cifar5k.py or eos_digits.py in experiments/configs'."""
    folder = os.path.dirname(_config_defaults[name])
    found = configs_with(_config_sections[name], folder)
    if not found:
        return f"{_main_name()} takes none of the configs in {folder or '.'}"
    listed = ", ".join(found[:-1]) + (" or " if len(found) > 1 else "") + found[-1]
    return f"{_main_name()} takes {listed} in {folder or '.'}"


def _load_config(path: str, name: str) -> ml_collections.ConfigDict:
    """The config of `path` (file[:argument]); app.UsageError in one line for a file that is
    no config, an argument its get_config() does not take or refuses (a ValueError), or
    something else than a ConfigDict."""
    file, colon, argument = path.partition(":")
    if not os.path.isfile(file):
        raise app.UsageError(f"config file {file!r} does not exist")
    arguments = _get_config_arguments(file)
    if arguments is None:
        hint = f"; {_meant_for(name)}" if name in _config_sections else ""
        raise app.UsageError(f"{file!r} is not a config file: it defines no get_config(){hint}")
    fewest, most = arguments
    if colon and most == 0:
        raise app.UsageError(
            f"config file {file!r} takes no ':{argument}' argument (its get_config() has no "
            f"parameter); give {file} alone"
        )
    if not colon and fewest > 0:
        raise app.UsageError(f"config file {file!r} needs an argument: {file}:<argument>")
    try:
        config = ConfigFileFlagParser(name).parse(path)
    except ValueError as error:  # get_config() refused its argument, in its own words
        raise app.UsageError(f"config {path!r}: {error.__context__ or error}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise app.UsageError(f"config file {file!r} does not give a ConfigDict")
    return config


def check_config(path: str, argv: list[str], name: str = "config") -> ml_collections.ConfigDict:
    """The config of `path`, before argv's overrides; app.UsageError for a config file that
    does not load, one without the section this main needs (see define_config), or a
    --{name}.* override in argv of a field that the config lacks (naming the closest one
    it has)."""
    config = _load_config(path, name)
    if name in _config_sections:
        section = _config_sections[name]
        if section not in config:
            raise app.UsageError(
                f"config {path!r} has no config.{section}: it is meant for another main; "
                f"{_meant_for(name)}"
            )
    known = list(_field_paths(config))
    for arg in argv[1:]:
        field = re.match(rf"--?(?:no)?{re.escape(name)}\.([^=\[]+)", arg)
        if field and field[1] not in known:
            close = difflib.get_close_matches(field[1], known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise app.UsageError(f"unknown config field '{field[1]}'{hint}")
    return config


def _field_paths(config: ml_collections.ConfigDict, prefix: str = ""):
    for key, value in config.items():
        yield prefix + key
        if isinstance(value, ml_collections.ConfigDict):
            yield from _field_paths(value, f"{prefix}{key}.")


def _flag_value(argv: list[str], name: str) -> str | None:
    """The last value given to --name in argv (as --name=v or --name v), else None."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        if re.fullmatch(rf"--?{re.escape(name)}", arg) and i + 1 < len(argv):
            value = argv[i + 1]
        elif given := re.fullmatch(rf"--?{re.escape(name)}=(.*)", arg):
            value = given[1]
    return value


def last_overrides(argv: list[str], name: str) -> list[str]:
    """argv with only the last --{name}.FIELD override of each field (as --name.f=v, --name.f
    v or --[no]name.f): ml_collections joins the values of a repeated tuple flag where a
    scalar takes the last, and the last flag wins for every field."""
    override = re.compile(rf"--?(no)?{re.escape(name)}\.([^=]+)(=.*)?")
    given: dict[str, list[range]] = {}
    i = 1
    while i < len(argv) and argv[i] != "--":
        found = override.fullmatch(argv[i])
        end = i + 1
        if found and not found[1] and found[3] is None and end < len(argv):
            end += not argv[end].startswith("-")  # --name.field value
        if found:
            given.setdefault(found[2], []).append(range(i, end))
        i = end
    dropped = {j for spans in given.values() for span in spans[:-1] for j in span}
    return [arg for j, arg in enumerate(argv) if j not in dropped]


def parse_flags(argv: list[str], known_only: bool = False) -> list[str]:
    """absl flag parsing with the config checked first; errors (positional arguments too,
    unless known_only) exit as one line. Of a repeated --config.FIELD the last wins."""
    defaults = [f"--{n}={d}" for n, d in _config_defaults.items() if _flag_value(argv, n) is None]
    argv = [argv[0], *defaults, *argv[1:]]
    try:
        for name in list(flags.FLAGS):
            if isinstance(flags.FLAGS[name].parser, ConfigFileFlagParser):
                argv = last_overrides(argv, name)
                path = _flag_value(argv, name)
                if path is not None:
                    check_config(path, argv, name)
        rest = flags.FLAGS(argv, known_only=known_only)
        if not known_only and len(rest) > 1:
            raise app.UsageError(f"unexpected arguments: {rest[1:]}")
        return rest
    except (flags.Error, app.UsageError) as e:
        _fail(e, EXIT_ERROR)


def start(main, known_only: bool = False) -> None:
    """app.run(main), with flag errors (unknown flag or config field, missing config file,
    missing required flag) as one line on stderr. known_only passes unknown flags to main.
    First the process restarts once with glibc's malloc set to reuse freed memory
    (numerics.restart_with_malloc_tunables)."""
    numerics.restart_with_malloc_tunables()
    app.run(main, flags_parser=functools.partial(parse_flags, known_only=known_only))


def _fail(error: BaseException | str, status: int):
    message = error if isinstance(error, str) else results.first_line(error)
    print(f"error: {message}", file=sys.stderr)
    if distributed.joined():
        distributed.abandon(status)
    sys.exit(status)


def entry_point(main):
    """Wraps an absl main: quiets library logs, and turns expected failures (bad input,
    unusable workdir, divergence, a full disk) and Ctrl-C (trainer.TrainingInterrupted names
    the step) into one line on stderr and the exit statuses above. In a multi-process run a
    failing process leaves at once (distributed.abandon), so that the others end with an
    error too instead of waiting for it."""

    @functools.wraps(main)
    def wrapped(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.ERROR)  # orbax logs every save; tfds warns freely
        try:
            if "workdir" in flags.FLAGS and flags.FLAGS.workdir:
                results.check_workdir(flags.FLAGS.workdir)  # before data and compiles
            return main(argv)
        except EXPECTED_ERRORS as e:
            logging.debug("full traceback", exc_info=True)
            _fail(e, EXIT_DIVERGED if isinstance(e, trainer.TrainingDiverged) else EXIT_ERROR)
        except KeyboardInterrupt as e:  # the work directory stays resumable
            logging.debug("full traceback", exc_info=True)
            _fail(str(e) or "interrupted; run the same command to resume", EXIT_INTERRUPTED)
        except Exception as e:
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk
                logging.debug("full traceback", exc_info=True)
                where = f" writing {e.filename}" if e.filename else ""
                _fail(f"no space left on device{where}; free some and rerun", EXIT_ERROR)
            if distributed.joined():  # a bug: keep its traceback, but do not wait for the others
                traceback.print_exc()
                distributed.abandon(EXIT_ERROR)
            raise

    return wrapped
