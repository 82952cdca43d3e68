"""Orbax checkpoints of any state pytree, restored bit-exactly into the same structure."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

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
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
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
        if distributed.is_primary():  # orbax saves collectively; the hash file is ours
            results.write_json(self.hashes_path, hashes)
        self._manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

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
