"""Multi-host runs: JAX's multi-controller runtime (one process per host, one global Mesh).

``initialize`` joins the processes with ``jax.distributed.initialize``; every process then runs the same
program on the same global arrays (SPMD). Settings come from arguments or the environment:

  GRPO_JAX_COORDINATOR_ADDRESS  host:port of process 0 (GPU clusters, CPU tests)
  GRPO_JAX_NUM_PROCESSES        number of processes
  GRPO_JAX_PROCESS_ID           this process's index
  GRPO_JAX_DISTRIBUTED=auto     let JAX detect the cluster (Cloud TPU VMs, SLURM, ...)
  GRPO_JAX_HEARTBEAT_TIMEOUT_S  seconds without a heartbeat after which a process counts as dead (60)

On CPU the processes exchange data through gloo. ``heartbeat_timeout_s`` bounds how long the survivors
wait for a process that died: after it they fail with JAX's error instead of hanging (default 60 s).

``to_host`` copies possibly multi-host arrays to NumPy arrays on every process.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

logger = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 60


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool | None = None,
               heartbeat_timeout_s: int | None = None, init_timeout_s: int = 300) -> bool:
    """Join the multi-controller runtime if asked to (arguments, else environment); returns whether it did.

    A single process (nothing configured) is a no-op. Must run before any other JAX call.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("GRPO_JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("GRPO_JAX_NUM_PROCESSES"):
        num_processes = int(env["GRPO_JAX_NUM_PROCESSES"])
    if process_id is None and env.get("GRPO_JAX_PROCESS_ID"):
        process_id = int(env["GRPO_JAX_PROCESS_ID"])
    if heartbeat_timeout_s is None:
        heartbeat_timeout_s = int(env.get("GRPO_JAX_HEARTBEAT_TIMEOUT_S", HEARTBEAT_TIMEOUT_S))
    auto = auto if auto is not None else env.get("GRPO_JAX_DISTRIBUTED", "").lower() == "auto"
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not auto and not explicit:
        return False
    if explicit and (coordinator_address is None or num_processes is None or process_id is None):
        raise ValueError(
            "multi-host: give all of coordinator address, number of processes and process id (got "
            f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}), or use auto-detection on a TPU VM"
        )
    if explicit and not 0 <= process_id < num_processes:
        raise ValueError(f"multi-host: process_id={process_id} must lie in [0, num_processes={num_processes})")
    # CPU devices exchange data through gloo (the setting only concerns the CPU backend)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=init_timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
    logger.info("joined %d processes as process %d (%d of %d devices local)", jax.process_count(),
                jax.process_index(), jax.local_device_count(), jax.device_count())
    return True


def to_host(tree: Any) -> Any:
    """The full values of a pytree of arrays as NumPy arrays on every process, in one transfer (an
    all-gather when an array spans hosts)."""
    spans_hosts = any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree))
    if spans_hosts:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))
