"""Orbax checkpoints of any state pytree, restored bit-exactly into the same structure."""

from __future__ import annotations

import contextlib
import errno
import gc
import glob
import logging as pylogging
import os
import shutil
import sys
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from eos_jax import bits, distributed, results


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (damaged, unverifiable, or of another model);
    the message names the file or folder at fault."""


class Checkpointer:
    """Saves a state every so often under `directory`, keeps the newest few, restores the latest.

    Saves are synchronous: when save() returns, the checkpoint is complete on disk. Orbax
    writes into a temporary folder and renames it, so an interrupted save is never 'latest'.
    The state's bit hash is written to hashes.json before each save and checked on restore:
    a damaged checkpoint, or one without its hash, is an error, not a silently different run.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    @property
    def hashes_path(self) -> str:
        return os.path.join(self.directory, "hashes.json")

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def _hashes(self) -> dict[str, str]:
        if not os.path.exists(self.hashes_path):
            return {}
        try:
            hashes = results.read_json(self.hashes_path)
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"cannot read {self.hashes_path} ({results.first_line(e)}); without it no "
                "checkpoint can be verified: use a new --workdir"
            ) from e
        if not isinstance(hashes, dict):
            raise CheckpointError(f"{self.hashes_path} is not a JSON object; use a new --workdir")
        return hashes

    def save(self, step: int, state: Any) -> None:
        # The hash goes to disk first: a save killed after it is merely a stale hash entry.
        kept = {str(s) for s in self._manager.all_steps()}
        hashes = {k: v for k, v in self._hashes().items() if k in kept}
        hashes[str(int(step))] = bits.tree_hash(state)
        try:
            if distributed.is_primary():  # orbax saves collectively; the hash file is ours
                results.write_json(self.hashes_path, hashes)
        except OSError as e:
            raise CheckpointError(f"cannot save {self._describe_failure(step, e)}") from e
        try:
            # A failing save (a full disk) makes orbax and its threads print hundreds of lines
            # of logs and tracebacks: held back, they make way for the one-line error below.
            # Not with several processes: the save is a collective there, and a process that
            # the runtime aborts inside it (a peer died) would lose its last words.
            # A Ctrl-C waits for the save to end (a second one does not).
            held = contextlib.nullcontext() if distributed.joined() else _stderr_held()
            with results.interrupt_deferred(), held:
                running = set(threading.enumerate())
                try:
                    self._manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
                    self._manager.wait_until_finished()
                except BaseException:  # a second Ctrl-C too: no half-written checkpoint stays
                    self._abandon(step, running)
                    raise
        except Exception as e:
            raise CheckpointError(f"cannot save {self._describe_failure(step, e)}") from e

    def _abandon(self, step: int, running: set) -> None:
        """After a failed save of `step`: closes the manager (this Checkpointer saves no
        more), waits up to a minute for the threads that the save started, then deletes the
        save's temporary folders."""
        for finish in (self._manager.wait_until_finished, self._manager.close):
            with contextlib.suppress(Exception):
                finish()
        deadline = time.monotonic() + 60
        for thread in set(threading.enumerate()) - running:
            # Thread's own join: orbax's threads override it to raise their error
            with contextlib.suppress(RuntimeError):  # one still starting
                threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))
        _quiet_closed_loop_callbacks()
        if distributed.is_primary():
            for path in glob.glob(f"{glob.escape(self.step_path(step))}.orbax-checkpoint-tmp*"):
                shutil.rmtree(path, ignore_errors=True)

    def _describe_failure(self, step: int, error: BaseException) -> str:
        name = f"checkpoint step {step} in {self.directory}"
        no_space = "no space left on device" in str(error).lower()
        if no_space or getattr(error, "errno", None) == errno.ENOSPC:
            return f"{name}: no space left on device; free some and run the same command again"
        return f"{name}: {results.first_line(error)}"

    def restore(self, like: Any, step: int | None = None) -> Any:
        """Restores `step` (default: latest) into the structure, dtypes and shapes of `like`,
        after checking it against the hash saved with it."""
        step = self.latest_step() if step is None else step
        name = f"checkpoint step {step} ({self.step_path(step)})"
        advice = f"delete {self.step_path(step)} to resume from the checkpoint before it"
        if not os.path.exists(self.hashes_path):
            raise CheckpointError(
                f"{self.hashes_path} is missing, so {name} cannot be verified; use a new --workdir"
            )
        expected = self._hashes().get(str(step))
        if expected is None:
            raise CheckpointError(f"{name} has no hash in {self.hashes_path}; {advice}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types; name the checkpoint in one line
            raise CheckpointError(f"cannot restore {name}: {results.first_line(e)}") from e
        if bits.tree_hash(state) != expected:
            raise CheckpointError(
                f"{name} does not match the hash saved with it in {self.hashes_path} "
                f"(damaged?); {advice}"
            )
        return state

    def close(self) -> None:
        self._manager.close()


def _quiet_closed_loop_callbacks() -> None:
    """After a failed save, tensorstore's writes still under way end later by calling back
    into orbax's closed event loop; Python would print each such RuntimeError ('Event loop
    is closed') as an unraisable exception, a traceback apiece. Drops those."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


def _drop_orphaned_save_tasks(record: pylogging.LogRecord) -> bool:
    """A logging filter for asyncio after a failed save: False for its reports of a task or
    future whose error nobody retrieved (the save's error has been reported already)."""
    return "exception was never retrieved" not in record.getMessage()


@contextlib.contextmanager
def _stderr_held():
    """Holds back what is written to stderr (file descriptor 2: Python, absl logging and C++
    alike, from any thread) while the block runs. When it succeeds, the text is written out
    after it; when it fails, it goes to the debug log (--verbosity=1 shows it)."""
    try:
        sys.stderr.flush()
        stderr = os.dup(2)
    except (OSError, ValueError):  # no stderr to hold back
        yield
        return
    read_end, write_end = os.pipe()
    held = bytearray()

    def drain():  # in memory: the disk may be the thing that is full
        while chunk := os.read(read_end, 1 << 16):
            held.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    failed = True
    try:
        yield
        failed = False
    finally:
        if failed:  # orphaned save tasks log their errors when collected, maybe at exit
            pylogging.getLogger("asyncio").addFilter(_drop_orphaned_save_tasks)
            gc.collect()
        sys.stderr.flush()
        os.dup2(stderr, 2)  # the pipe's last write end closes: the reader sees its end
        os.close(stderr)
        reader.join()
        os.close(read_end)
        if failed:
            logging.debug("held back from stderr:\n%s", held.decode(errors="replace"))
        else:
            view = memoryview(held)
            while view:
                view = view[os.write(2, view) :]
