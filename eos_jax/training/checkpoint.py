"""Orbax checkpoints of any state pytree, restored bit-exactly into the same structure."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from eos_jax import bits, results


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (corrupt, or from a different model)."""


class Checkpointer:
    """Saves a state every so often under `directory`, keeps the newest few, restores the latest.

    Saves are synchronous: when save() returns, the checkpoint is complete on disk. Orbax
    writes into a temporary folder and renames it, so an interrupted save is never 'latest'.
    The state's bit hash is saved beside each step (hashes.json) and checked on restore, so
    a damaged checkpoint is an error, not a silently different run.
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
    def _hashes_path(self) -> str:
        return os.path.join(self.directory, "hashes.json")

    def _hashes(self) -> dict[str, str]:
        return results.read_json(self._hashes_path) if os.path.exists(self._hashes_path) else {}

    def save(self, step: int, state: Any) -> None:
        self._manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()
        kept = {str(s) for s in self._manager.all_steps()}
        hashes = {k: v for k, v in self._hashes().items() if k in kept}
        hashes[str(int(step))] = bits.tree_hash(state)
        results.write_json(self._hashes_path, hashes)

    def restore(self, like: Any, step: int | None = None) -> Any:
        """Restores `step` (default: latest) into the structure, dtypes and shapes of `like`."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types; name the checkpoint in one line
            raise CheckpointError(
                f"cannot restore checkpoint step {step} in {self.directory}: "
                f"{results.first_line(e)}"
            ) from e
        expected = self._hashes().get(str(step))
        if expected is not None and bits.tree_hash(state) != expected:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not match the hash saved "
                f"with it (damaged?); delete {os.path.join(self.directory, str(step))} to "
                "resume from the one before"
            )
        return state

    def close(self) -> None:
        self._manager.close()
