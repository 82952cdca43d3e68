"""Orbax checkpoints of any state pytree, restored bit-exactly into the same structure."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (corrupt, or from a different model)."""


class Checkpointer:
    """Saves a state every so often under `directory`, keeps the newest few, restores the latest.

    Saves are synchronous: when save() returns, the checkpoint is complete on disk. Orbax
    writes into a temporary folder and renames it, so an interrupted save is never 'latest'.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        self._manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> Any:
        """Restores `step` (default: latest) into the structure, dtypes and shapes of `like`."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types; name the checkpoint in one line
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"cannot restore checkpoint step {step} in {self.directory}: {first_line}"
            ) from e

    def close(self) -> None:
        self._manager.close()
