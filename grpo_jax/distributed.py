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

Work on the host side is split between the processes, never repeated:

  ``owned_rows``     which rows of a row-sharded array this process handles (decodes, rewards): those its
                     devices hold, whole groups at a time, each row handled by exactly one process;
  ``sum_over_hosts`` assembles per-process results into the global values (every process gets them);
  ``to_host``        copies possibly multi-host arrays to NumPy arrays on every process;
  ``global_rows``    places a host array on a sharding, each process transferring only its own shards.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from grpo_jax.errors import ConfigError

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
        raise ConfigError(
            "multi-host: give all of coordinator address, number of processes and process id (got "
            f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}), or use auto-detection on a TPU VM"
        )
    if explicit and not 0 <= process_id < num_processes:
        raise ConfigError(f"multi-host: process_id={process_id} must lie in [0, num_processes={num_processes})")
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


def owned_rows(sharding: jax.sharding.Sharding, num_rows: int, group_size: int = 1) -> np.ndarray:
    """Global indices (ascending) of the rows of a [num_rows, ...] array with ``sharding`` that this process
    handles. A group of ``group_size`` consecutive rows (the G completions of one prompt) goes whole to the
    lowest-index process among those whose devices hold its first row, so every row is handled by exactly
    one process and a process handles the rows it holds. One process: every row."""
    if num_rows % group_size:
        raise ValueError(f"owned_rows: {num_rows} rows do not split into groups of {group_size}")
    if jax.process_count() == 1:
        return np.arange(num_rows)
    owner = np.full(num_rows, np.iinfo(np.int64).max)
    for device, index in sharding.devices_indices_map((num_rows,)).items():
        owner[index[0]] = np.minimum(owner[index[0]], device.process_index)
    group_owner = owner[::group_size]
    return np.flatnonzero(np.repeat(group_owner, group_size) == jax.process_index())


def sum_over_hosts(tree: Any) -> Any:
    """The elementwise sum over processes of a pytree of NumPy arrays (of equal shapes on every process), on
    every process; the identity in one process. With each process filling only the entries it owns (zeros
    elsewhere), this assembles the global arrays exactly."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    stacked = multihost_utils.process_allgather(tree, tiled=False)  # [processes, ...] per leaf
    return jax.tree.map(lambda x: np.asarray(x).sum(axis=0), stacked)


def max_over_hosts(value: int) -> int:
    """The largest of one integer per process, on every process."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([value], np.int64), tiled=True)))


def scatter_rows(rows: np.ndarray, values: np.ndarray, num_rows: int) -> np.ndarray:
    """[num_rows, ...] zeros with ``values`` at ``rows``: one process's share for ``sum_over_hosts``."""
    out = np.zeros((num_rows,) + values.shape[1:], values.dtype)
    out[rows] = values
    return out


def global_rows(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """``x`` (the same global value on every process) as a jax.Array with ``sharding``; each process
    copies only the shards of its own devices to them (nothing is checked or exchanged between hosts)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
