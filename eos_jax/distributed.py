"""Several processes (hosts) as one JAX program: joining the runtime, and who writes results.

    distributed.initialize("10.0.0.2:8476", num_processes=2, process_id=0)   # explicit
    distributed.initialize(auto=True)    # Cloud TPU, Slurm, Open MPI, k8s: JAX detects them

Call it once per process before any array exists (the entry points do, from their
--coordinator_address / --num_processes / --process_id / --distributed_auto flags). Then
jax.devices() lists every process's devices, config.mesh spans them all, and each process
feeds its devices' rows of the same global batch (training/mesh.py). Only process 0
writes results (metrics, summary, tables, figures); checkpoints are saved by all processes
together (orbax), so the work directory must be one that every process sees.

A process that dies stops sending heartbeats; after `heartbeat_timeout_s` the runtime ends
the others with an error instead of leaving them waiting in a collective for ever. A process
that fails must therefore leave with abandon(), not a normal exit: a normal exit waits in the
runtime's shutdown barrier for processes that are themselves waiting for it in a collective.
"""

from __future__ import annotations

import os
import sys

import jax

_joined = False  # whether this process is one of several (set by initialize)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    heartbeat_timeout_s: int = 60,
    initialization_timeout_s: int = 300,
) -> bool:
    """Joins the distributed runtime; returns whether this is a multi-process run.

    Explicit: all of coordinator_address ("host:port" of process 0), num_processes and
    process_id. auto: jax.distributed.initialize() detects the cluster from its environment.
    Neither: one process, nothing to do.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit) or auto:
            raise ValueError(
                f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r} "
                f"and process_id={process_id!r}: give all three (and not auto), or none"
            )
        host, _, port = coordinator_address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"coordinator_address={coordinator_address!r} must be 'host:port'")
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"num_processes={num_processes!r} must be an integer >= 1")
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id!r} must be in [0, {num_processes - 1}]")
    elif not auto:
        return False
    for name, value in (("heartbeat", heartbeat_timeout_s), ("init", initialization_timeout_s)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} timeout {value!r} must be an integer number of seconds >= 1")
    global _joined
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=initialization_timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
    )
    _joined = jax.process_count() > 1
    return _joined


def joined() -> bool:
    """Whether initialize() made this process one of several."""
    return _joined


def abandon(status: int):
    """Ends this process at once with `status`, skipping the shutdown barrier (see above)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def is_primary() -> bool:
    """True in the process that writes results (process 0; the only one in a single run)."""
    return jax.process_index() == 0
